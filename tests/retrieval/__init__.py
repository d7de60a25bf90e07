"""Tests of tailored.retrieval."""
