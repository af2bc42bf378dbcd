"""Carina benchmarks: `python bench/run.py [--quick]` prints one table (see bench/README.md)."""
