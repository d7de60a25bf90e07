"""Benchmarks of tailored.privacy: erasure under load, DP training, k-anonymity."""
