"""Tests of tailored.privacy."""
