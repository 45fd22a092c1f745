#!/usr/bin/env bash
# Install (idempotent), then lint, type-check and run every test against real Redis, worker and API.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
.venv/bin/ruff check api worker common cli tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
