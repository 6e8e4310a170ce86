"""Benchmarks: run with `pytest bench/<file> --benchmark-json=bench/results/<name>.json`.

They live outside the default test paths (tests/) so `pytest` alone never runs them.
"""
