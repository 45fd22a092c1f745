"""Benchmarks: `python -m bench NAME [--smoke]` (see bench/__main__.py), or `python -m bench.NAME`. Each starts
its own Redis, worker and API (except `gpu`, which drives the engines in-process), prints a table and writes
JSON (and some a PNG) to bench/results/."""
