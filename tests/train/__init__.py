"""Tests of tailored.train."""
