"""Benchmarks: measured end to end through the same library steps the pipeline runs."""
