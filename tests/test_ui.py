"""The status page in a real headless browser (Debian chromium driven by playwright-core) against the stack.

Writes bench/results/status-page.png. Skips only when node, the npm package or /usr/bin/chromium cannot be
had (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from tests.stack import ROOT, Stack
from tests.tools import CHROMIUM, NPM_PREFIX, npm_package

SCRIPT = ROOT / "tests" / "ui" / "status_page.cjs"
SCREENSHOT = ROOT / "bench" / "results" / "status-page.png"
EXPECTED = {"all-minilm-l6-v2": "embedding", "tiny-qwen3-chat": "chat"}


def test_status_page_in_chromium(stack: Stack) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not CHROMIUM.is_file():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium; .ci/run installs it)")
    if npm_package("playwright-core") is None:
        pytest.skip("npm package playwright-core unavailable")
    # Something to count in the throughput table.
    r = httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "status"},
                   timeout=120)
    assert r.status_code == 200, r.text
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    env = {**os.environ, "NODE_PATH": str(NPM_PREFIX / "node_modules")}
    proc = subprocess.run([node, str(SCRIPT), f"{stack.base_url}/", str(SCREENSHOT), *EXPECTED], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    page = json.loads(proc.stdout.strip().splitlines()[-1])
    assert page["title"].startswith("Local LLM Interface")
    assert page["errors"] == [], page["errors"]
    assert page["state"].startswith("ready")
    shown = {row["id"]: row["cells"] for row in page["models"]}
    for model, model_type in EXPECTED.items():
        assert model in shown, shown
        assert shown[model][1] == model_type
        assert shown[model][3] in ("available", "loading", "loaded", "parked")  # as the scheduler reports it
    assert {row["cells"][0] for row in page["queues"]} == {"chat", "embedding", "reranker"}
    assert page["workers"] and page["workers"][0]["cells"][1]
    assert any(row["cells"][0] == "/v1/embeddings" and int(row["cells"][1]) >= 1 for row in page["throughput"])
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000
