"""Tests of tailored.serve."""
