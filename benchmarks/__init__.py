"""Throughput benchmarks: ae-dist against the seed's loop and its peers (python -m benchmarks.throughput)."""
