"""Models list, health, the CLI's models table, and the README staying true to Settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from common.settings import Settings
from tests.stack import ROOT, Stack


def test_models_lists_every_folder_with_its_type(stack: Stack) -> None:
    body = httpx.get(f"{stack.base_url}/v1/models").json()
    assert body["object"] == "list"
    types = {m["id"]: m["type"] for m in body["data"]}
    assert types["all-minilm-l6-v2"] == "embedding"
    assert types["tiny-qwen3-embedding"] == "embedding"
    assert types["tiny-qwen3-chat"] == "chat"
    assert types["tiny-bert-reranker"] == "reranker"
    assert types["tiny-qwen3-reranker"] == "reranker"
    for model in body["data"]:
        assert model["object"] == "model" and model["owned_by"] and model["size_bytes"] > 0


def test_single_model_and_unknown_model(stack: Stack) -> None:
    assert httpx.get(f"{stack.base_url}/v1/models/all-minilm-l6-v2").json()["type"] == "embedding"
    missing = httpx.get(f"{stack.base_url}/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_health_reports_ready_and_the_worker(stack: Stack) -> None:
    body = httpx.get(f"{stack.base_url}/v1/health").json()
    assert body["ready"] is True
    assert len(body["workers"]) >= 1 and "embedding" in body["workers"][0]["types"]


def test_cli_models_table(models_dir: Path) -> None:
    env = {**os.environ, "LLM_MODELS_DIR": str(models_dir)}
    out = subprocess.run([sys.executable, "-m", "cli", "models"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"all-minilm-l6-v2\s+embedding", out)
    assert re.search(r"tiny-qwen3-chat\s+chat", out)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`LLM_{name.upper()}`" in readme, f"LLM_{name.upper()} missing from README.md"
