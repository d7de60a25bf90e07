"""Tests of tailored.cli."""
