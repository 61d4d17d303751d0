"""Benchmarks of FBA-ReID: each bench_*.py runs under pytest-benchmark and as `python -m benchmarks.bench_x`."""
