"""`python -m bench report`: JSON results -> docs page with a table per benchmark and PNG plots.

The samples are small literal copies of what each bench/NAME.py passes to write_json (same keys, fewer rows).
Plus, when bench/reference/ holds committed runs, the report on them (skipped otherwise)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.__main__ import BENCHMARKS
from bench.__main__ import main as bench_main
from bench.util import machine

PNG = b"\x89PNG\r\n\x1a\n"
DIST = {"p50": 2.0, "p95": 3.0, "p99": 4.0, "mean": 2.2, "n": 12}
HOST = {"date": "2025-01-02T03:04:05+00:00", "platform": "Linux-6.8-x86_64", "cpu": "x86_64", "cores": 2,
        "load_avg_at_start": [1.5, 1.2, 1.0], "python": "3.11.7",
        "versions": {"vllm": "0.32.0", "transformers": "5.19.0", "torch": "2.13.0+cpu"}}


def chat_side(rate: float) -> dict[str, Any]:
    return {"tokens_per_s": rate, "ttft_ms_p50": 20.0, "ttft_ms_p95": 25.0, "chunks_per_1k_tokens": 800.0}


def switch_cell(cache: int, parking: bool, in_flight: int) -> dict[str, Any]:
    return {"cache_size": cache, "cpu_cache": parking, "in_flight": in_flight, "requests": 12, "loads": 6,
            "loads_per_100": 50.0, "seconds": 1.2, "requests_per_s": 10.0}


def switching_times(median_ms: float) -> dict[str, Any]:
    return {"first_request_ms": {"model_a": 900.0, "model_b (evicts a)": 950.0}, "switch_request_ms": [median_ms],
            "switch_request_ms_median": median_ms, "warm_request_ms_median": 4.5,
            "worker_logged_load_ms_median": 700.0, "loads_logged": 2}


def tools_run(p50: float) -> dict[str, Any]:
    return {"latency_ms": {**DIST, "p50": p50}, "completion_tokens": 64, "wall_s": 1.0, "ms_per_token": 3.2,
            "tokens_per_s": 64.0, "with_calls": 8}


def gpu_switch() -> dict[str, Any]:
    return {"page_cache_dropped": False, "cold_load_s": 1.5, "reload_page_cache_warm_s": 0.8, "park_to_cpu_s": 0.2,
            "restore_pageable_s": 0.1, "restore_pinned_s": 0.05, "cold_over_restore_pinned": 30.0,
            "engine_park_s": 0.2, "engine_wake_s": 0.06, "engine_wake_over_cold_load": 0.04}


def samples() -> dict[str, dict[str, Any]]:
    """One JSON per benchmark, in the shape bench/NAME.py writes."""
    return {**throughput_samples(), **service_samples()}


def throughput_samples() -> dict[str, dict[str, Any]]:
    rows_dispatch: list[dict[str, Any]] = [
        {"clients": c, "stack": DIST, "direct": {**DIST, "p50": 0.004}, "requests": 12, "requests_per_s": 300.0,
         "added_ms": {"p50": 2.0, "p95": 3.0, "p99": 4.0}, "repeats": []} for c in (1, 4)]
    return {
        "dispatch": {"benchmark": "dispatch", "machine": HOST, "rows": rows_dispatch, "smoke": False,
                     "goal": {"clients": 64, "measured": False}},
        "embeddings": {"benchmark": "embeddings", "plan": {"model": "tiny", "texts": 40, "repeats": 1},
                       "machine": HOST, "texts": 40, "tokens": 900, "min_cosine_vs_sentence_transformers": 0.9999,
                       "rows": [{"path": "SentenceTransformer.encode (in process)", "texts_per_s": 100.0,
                                 "tokens_per_s": 2000.0, "ratio": 1.0, "all_seconds": [0.4]},
                                {"path": "stack: one request, all inputs", "texts_per_s": 90.0, "tokens_per_s": 1800.0,
                                 "ratio": 0.9, "paired_ratios": [0.9], "all_seconds": [0.44]}]},
        "chat": {"benchmark": "chat", "smoke": False, "machine": "x86_64, 2 CPUs", "rounds": 1, "max_tokens": 96,
                 "model": "tiny random Qwen3", "baseline": "vLLM's server", "rows": [
                     {"concurrency": c, "vllm": chat_side(100.0 * c), "ours": chat_side(90.0 * c),
                      "throughput_ratio": 0.9, "paired_ratios": [0.9], "added_ttft_ms_p50": 2.0,
                      "cpu_s_per_1k_tokens": {"vllm": {"vllm server": 0.5, "client": 0.1},
                                              "ours": {"api": 0.2, "worker": 0.3, "redis": 0.05, "client": 0.1}},
                      "runs": {}} for c in (1, 32)]},
        "rerank": {"plan": {"requests": 4, "docs_per_request": 8, "concurrency": 2, "repeats": 1,
                            "model_size": "tiny"}, "pairs": 32, "machine": HOST, "stack_pairs_per_s": 500.0,
                   "cross_encoder_pairs_per_s": 450.0, "ratio": 1.111, "stack_s": [0.06], "cross_encoder_s": [0.07]},
        "batch": {"plan": {"model": "tiny", "inputs": 300, "concurrency": 16}, "machine": HOST,
                  "interactive_inputs_per_s": 200.0, "batch_inputs_per_s": 400.0, "ratio_batch_over_interactive": 2.0,
                  "latency_idle_ms": {"p50": 5.0, "p95": 7.0}, "latency_during_batch_ms": {"p50": 9.0, "p95": 14.0},
                  "batch_lines_done_during_probe": 120},
        "fairness": {"plan": {"model": "tiny", "big_texts": 2048, "big_words": 60, "probes": 8, "repeats": 1},
                     "machine": HOST, "idle_ms": DIST, "during_big_request_ms": {**DIST, "p99": 7.0},
                     "big_request_s": [3.2], "p99_over_idle": 1.75, "p50_over_idle": 1.0, "goal_p99_within_2x": True},
    }


def service_samples() -> dict[str, dict[str, Any]]:
    return {
        "switching": {"benchmark": "switching", "plan": {"base": "tiny"}, "machine": HOST,
                      "raw_transformers": {"load_ms_median": 600.0, "load_and_one_text_ms_median": 650.0,
                                           "load_ms": [600.0]},
                      "switch": switching_times(720.0), "switch_over_raw_load_and_serve": 1.108,
                      "switch_over_warm": 160.0, "warm_switch": switching_times(60.0),
                      "warm_switch_over_cold_switch": 0.083,
                      "interleaved": [switch_cell(1, False, 1), switch_cell(1, True, 8), switch_cell(2, True, 8)],
                      "vllm_chat": [{"mode": "in-process, eager", "env": {}, "load_s": [1.9, 0.4, 0.3, 0.3],
                                     "request_ms": [2100.0, 500.0, 400.0, 400.0], "first_load_s": 1.9,
                                     "second_load_s": 0.4, "switch_back_load_s": 0.3}]},
        "recovery": {"benchmark": "recovery", "plan": {"base": "tiny", "clients": 8}, "machine": HOST, "settings": [
            {"heartbeat_s": 0.2, "kills": 1, "first_reclaimed_answer_s": {"median": 0.6, "max": 0.6},
             "last_reclaimed_answer_s": {"median": None, "max": None}, "failed_per_kill": {"mean": 0.0, "max": 0},
             "in_flight_at_kill": [8], "pending_on_victim": [3], "reclaimed_counter": [3], "requests_total": 400,
             "failed_total": 0, "per_kill": []}], "smoke": True},
        "scaleout": {"plan": {"models": [2], "workers": [1, 2], "requests": 40, "concurrency": 8}, "machine": HOST,
                     "rows": [{"models": 2, "workers": w, "requests": 40, "wall_s": 2.0 / w, "loads": 10 // w,
                               "loads_per_worker": {f"w{n + 1}": 10 // w // w for n in range(w)}, "failed": 0}
                              for w in (1, 2)]},
        "tools": {"model": "tiny-qwen25-tools", "engine": "vllm", "requests": 8, "rounds": 1, "concurrency": 4,
                  "machine": HOST, "runs": {"no tools": [tools_run(100.0)], "auto": [tools_run(110.0)],
                                            "required": [tools_run(130.0)]}},
        "gpu": {"benchmark": "gpu", "machine": {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.19.0",
                                                "cpu_cores": 16, "gpu": "NVIDIA H200", "stand_ins": []},
                "smoke": False, "complete": False,
                "embedding": {"sorted_tokens_per_s": 250_000, "naive_tokens_per_s": 120_000,
                              "speedup_sorted_over_naive": 2.083, "goal_tokens_per_s": 250_000, "goal_met": True,
                              "no_padding_mask": {"sorted_tokens_per_s": 300_000, "max_abs_diff_vs_masked": 1e-3}},
                "rerank": {"sorted_pairs_per_s": 9000, "naive_pairs_per_s": 6000, "speedup_sorted_over_naive": 1.5},
                "switching": {"embedding": gpu_switch(), "reranker": gpu_switch()}},
        "gpu_check": {"machine": {**HOST, "gpu": None}, "total_s": 3.0,
                      "coresident": {"budget_bytes": 8 * 2**30, "all_resident": True, "resident_together": ["e"],
                                     "models": {"embedding": {"type": "embedding", "planned_gpu_bytes": 2**30,
                                                              "measured_after_batch_bytes": 2**29, "ratio": 0.5,
                                                              "within_10pct": False}}},
                      "park_and_wake": {"parked": True, "park_s": 0.1, "wake_s": 0.05, "weight_bytes": 2**28,
                                        "gpu_freed_bytes": 2**28, "pinned_buffer_bytes": None,
                                        "answers_equal_after_wake": True},
                      "offload": {"skipped": "no CUDA device"}},
    }


def write(folder: Path, name: str, data: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def sections(page: str) -> dict[str, str]:
    """`### NAME` -> its text up to the next heading."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^### (\S+)[^\n]*\n(.*?)(?=^##|\Z)", page, re.M | re.S)}


def check_pngs(page: str, page_path: Path) -> list[Path]:
    images = [page_path.parent / link for link in re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", page)]
    for image in images:
        data = image.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, image
    return images


def test_every_benchmark_gets_a_table_and_a_plot(tmp_path: Path) -> None:
    assert set(samples()) == set(BENCHMARKS)
    for name, data in samples().items():
        write(tmp_path / "results" / "cpu-2core", name, data)
    out = tmp_path / "docs" / "benchmarks.md"
    assert bench_main(["report", "--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    found = sections(page)
    assert list(found) == list(BENCHMARKS)  # in the benchmarks' order
    for name, text in found.items():
        assert re.search(r"^\|.*\|\n\|(---\|)+\n\|", text, re.M), f"{name}: no table"
        assert "flattened" not in text, f"{name}: the report did not know the shape of bench/{name}.py"
        assert f"benchmarks/cpu-2core/{name}.png" in text, f"{name}: no plot"
    assert "## cpu-2core" in page
    assert "Run 2025-01-02T03:04:05+00:00 on Linux-6.8-x86_64, x86_64, 2 cores" in found["dispatch"]
    assert "vllm 0.32.0" in found["dispatch"] and "NVIDIA H200" in found["gpu"]
    assert "date not recorded" in found["chat"]  # an older run: machine as a string, no date
    assert "| 32 | 2,880 | - | 3,200 | 0.90x | - |" in found["chat"]
    assert "| in-process, eager | 1.90 | 0.40 | 0.30 | 400 | 500 | 2,100 / 500 / 400 / 400 |" in found["switching"]
    assert len(check_pngs(page, out)) == len(BENCHMARKS)
    import matplotlib.image

    assert matplotlib.image.imread(out.parent / "benchmarks" / "cpu-2core" / "chat.png").shape[0] > 100


def test_kinds_smoke_runs_and_unknown_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    chat = samples()["chat"]
    write(results / "cpu-2core", "chat", chat)
    write(results / "cpu-2core", "chat-smoke", {**chat, "smoke": True})  # hidden: chat.json sits beside it
    write(results / "gpu-h100", "gpu", samples()["gpu"])
    write(results / "gpu-h100", "dispatch-smoke", {**samples()["dispatch"], "smoke": True})
    write(results / "gpu-h100", "custom", {"machine": HOST, "rows": [{"x": 1.5}], "ok": True, "label": "a"})
    write(results / "gpu-h100", "rerank", {"plan": {}, "pairs": 3})  # a shape the rerank table does not know
    (results / "gpu-h100" / "broken.json").write_text("{not json", encoding="utf-8")
    out = tmp_path / "page.md"
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.index("## cpu-2core") < page.index("## gpu-h100")
    found = sections(page)
    assert list(found) == ["chat", "dispatch", "rerank", "gpu", "custom"]  # the benchmarks' order, then others
    assert "### dispatch (smoke)" in page and "### chat (smoke)" not in page
    assert "| `rows[0].x` | 1.50 |" in found["custom"] and "date not recorded" not in found["custom"]
    assert "| `pairs` | 3 |" in found["rerank"] and "flattened" in found["rerank"]
    assert "The run stopped early" in found["gpu"]
    assert len(check_pngs(page, out)) == 3  # chat, gpu, dispatch: no plot for the unknown shapes


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "page.md"
    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 1
    assert report.main(["--results", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not out.exists()


def test_machine_records_date_platform_and_versions() -> None:
    info = machine()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", info["date"])
    assert info["platform"] and info["cores"]
    assert {"torch", "transformers"} <= set(info["versions"])


def test_report_is_not_a_benchmark() -> None:
    assert "report" not in BENCHMARKS  # so `python -m bench all` does not run it


@pytest.mark.skipif(not any(report.REFERENCE.rglob("*.json")) if report.REFERENCE.is_dir() else True,
                    reason="no committed reference runs in bench/reference/")
def test_report_on_the_committed_reference_runs(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    assert report.main(["--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    found = sections(page)
    assert len(found) == sum(len(results) for results in report.collect(report.REFERENCE).values())
    for name, text in found.items():
        assert "|---|" in text, f"{name}: no table"
        assert "date not recorded" not in text, f"{name}: a reference run must record its date (bench/util.py)"
    assert check_pngs(page, out)
