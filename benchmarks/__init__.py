"""Benchmarks of the memory engine: latency at scale, ANN recall, mem0 side by side, LoCoMo.

Run them with ``python -m benchmarks NAME [options]`` (or ``make bench``); results
land in ``benchmarks/results/`` as JSON (with machine and version info) and PNG plots.
"""
