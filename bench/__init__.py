"""Benchmarks: `python -m bench.<name>` (each starts its own Redis, worker and API)."""
