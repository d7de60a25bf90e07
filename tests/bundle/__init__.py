"""Tests of tailored.bundle."""
