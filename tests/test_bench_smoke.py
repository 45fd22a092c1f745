"""Every benchmark still runs: `python -m bench NAME --smoke` (tiny models, a few requests) exits 0 and writes
its JSON. The runs start together, a few at a time (each waits mostly on its own processes starting), and
write into a temporary folder, never bench/results/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.stack import ROOT

# Longest first, so that the pool's tail is short.
BENCHMARKS = ("chat", "switching", "batch", "rerank", "recovery", "scaleout", "tools", "gpu", "embeddings", "fairness",
              "dispatch", "gpu_check")
PARALLEL = 3
TIMEOUT_S = 540
PLOTS = {"dispatch", "embeddings"}


def _run(name: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "bench", name, "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Future[Any]]]:
    folder = tmp_path_factory.mktemp("bench")
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    runs = {name: (folder / f"{name}.json", pool.submit(_run, name, folder / f"{name}.json")) for name in BENCHMARKS}
    pool.shutdown(wait=False)
    return runs


@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke_mode_runs(name: str, smoke_runs: dict[str, tuple[Path, Future[Any]]]) -> None:
    out, future = smoke_runs[name]
    done: subprocess.CompletedProcess[str] = future.result()
    assert done.returncode == 0, f"bench {name} --smoke failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert out.is_file(), f"bench {name} --smoke wrote no {out.name}"
    result = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(result, dict) and result
    if name in PLOTS:
        assert out.with_suffix(".png").is_file()


def test_report_knows_every_shape(smoke_runs: dict[str, tuple[Path, Future[Any]]], tmp_path: Path) -> None:
    """`python -m bench report` on the smoke runs' JSON: each written file gets its own table, none the fallback
    (a benchmark whose JSON changed shape needs bench/report_tables.py changed too)."""
    from bench.report import main as report

    written = [name for name, (out, future) in smoke_runs.items() if future.result() and out.is_file()]
    page = tmp_path / "benchmarks.md"
    assert report(["--results", str(smoke_runs[written[0]][0].parent), "--out", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "flattened" not in text
    for name in written:
        assert re.search(rf"^### {name}( \(smoke\))?$", text, flags=re.M), name


def test_entry_point_lists_benchmarks() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for name in (*BENCHMARKS, "all"):
        assert name in done.stdout
