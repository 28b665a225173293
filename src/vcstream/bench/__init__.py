"""Benchmarks anyone can rerun; each prints its figures (and a same-run baseline)."""
