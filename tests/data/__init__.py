"""Tests of tailored.data."""
