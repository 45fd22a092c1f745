"""`llm-interface plan`: the memory plan a worker would make for the models folder, without loading anything.

For a card the user names (`--gpu-gb 8`, also on a machine without a GPU) or the local device: per model its
type, placement, GPU bytes, CPU-offloaded bytes, KV cache, context length and the engine arguments it would
get, and whether everything fits together with vLLM's start-up test passing for each engine.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from common.discovery import scan_models
from common.settings import Settings
from worker.models import ModelManager
from worker.policy.planner import GIB, GpuInfo, PlannerParams, gpu_budget_bytes, plan_placements, vllm_start_check
from worker.scheduler import device_memory


def plan_report(settings: Settings, gpu_gb: float | None = None) -> dict[str, Any]:
    """The plan as data: the card, the budget and one row per model (`--json` prints `models`)."""
    models = ModelManager(settings)
    models.catalog = scan_models(settings.models_dir, settings.load_policy, settings.default_models)
    params = PlannerParams.from_settings(settings)
    if gpu_gb is not None:
        gpu: GpuInfo | None = GpuInfo.simulated(gpu_gb)
        params = dataclasses.replace(params, device="cuda")
    else:
        gpu = device_memory(settings)
    budget = gpu_budget_bytes(params, gpu)
    plan = plan_placements(models.catalog.models.values(), gpu, params, models.chat_engines())
    resident = sum(p.gpu_bytes for p in plan.values())
    rows = []
    for info in models.catalog.models.values():
        placement = plan[info.id]
        others = resident - placement.gpu_bytes  # loaded last, after every other model
        check = None if gpu is None else vllm_start_check(placement, gpu.free_bytes - others, gpu.total_bytes)
        rows.append({"id": info.id, "type": str(info.type), "quantization": info.quantization, **placement.card(),
                     "start_check": check or "ok"})
    return {"gpu_total_bytes": None if gpu is None else gpu.total_bytes,
            "gpu_free_bytes": None if gpu is None else gpu.free_bytes, "budget_bytes": budget,
            "resident_bytes": resident, "all_resident": budget is None or resident <= budget,
            "models": rows, "problems": [p.to_dict() for p in models.catalog.problems]}


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def render(report: dict[str, Any]) -> str:
    """The plan as a table, then the totals."""
    lines = [f"{'MODEL':34} {'TYPE':9} {'DEVICE':6} {'GPU GiB':>8} {'OFFLOAD':>8} {'KV GiB':>7} {'CONTEXT':>8}  "
             "ENGINE ARGS"]
    for row in report["models"]:
        args = " ".join(f"{k}={v}" for k, v in row["engine_args"].items() if v is not None)
        lines.append(f"{row['id'][:34]:34} {row['type']:9} {row['device']:6} {_gib(row['gpu_bytes']):>8} "
                     f"{_gib(row['cpu_offload_bytes']):>8} {_gib(row['kv_cache_bytes']):>7} "
                     f"{row['max_model_len'] or '-'!s:>8}  {args or '-'}")
        for note in (row["error"], None if row["start_check"] == "ok" else row["start_check"]):
            if note:
                lines.append(f"  ! {note}")
    if report["budget_bytes"] is None:
        lines.append("no GPU: every model runs on the CPU")
    else:
        together = "yes" if report["all_resident"] else "no (the scheduler switches between them)"
        lines.append(f"card {_gib(report['gpu_total_bytes'])} GiB, free at start {_gib(report['gpu_free_bytes'])} "
                     f"GiB, budget {_gib(report['budget_bytes'])} GiB; all resident together: {together} "
                     f"({_gib(report['resident_bytes'])} GiB)")
    lines += [f"! {p['id'] or p['path']}: {p['error']}" for p in report["problems"]]
    return "\n".join(lines)


def main(settings: Settings, gpu_gb: float | None, as_json: bool) -> int:
    report = plan_report(settings, gpu_gb)
    print(json.dumps(report["models"], indent=2) if as_json else render(report))
    return 0
