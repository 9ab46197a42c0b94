"""Benchmarks: run as ``python -m bench.NAME`` from the repository root; each prints markdown tables."""
