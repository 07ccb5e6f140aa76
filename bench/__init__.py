"""Benchmarks: each module runs as ``python -m bench.<name>`` and writes its results to ``bench/results/``."""
