"""The GPU benchmark's scheduler section: switching through the worker's own `Scheduler` (the product path:
policy, park to pinned CPU memory, wake), in-process, no Redis (see bench/gpu.py).

Two ids on the same embedding folder, one resident at a time (`LLM_MODEL_CACHE_SIZE=1`). Each request is a
job: `acquire` (load or switch as the policy decides), one short batch, `release`. Measured: the first
load, a cold switch (no CPU cache: unload, load from disk), a warm switch (the other model comes back from
its parked copy), and that a parked model answers exactly as before it was parked.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import numpy as np

from bench.gpu_timing import Plan, sync
from common.discovery import Catalog, ModelInfo
from common.protocol import ModelType
from worker.models import ModelManager
from worker.scheduler import Scheduler

SHORT = [[5] * 16, [6] * 32]


def _with(settings: Any, **changes: Any) -> Any:
    if hasattr(settings, "model_copy"):  # pydantic Settings
        return settings.model_copy(update=changes)
    return type(settings)(**{**vars(settings), **changes})  # bench/gpu_models.py's stand-in


async def _switches(plan: Plan, info: ModelInfo, settings: Any) -> dict[str, Any]:
    other = replace(info, id=f"{info.id}-b")
    manager = ModelManager(settings)
    manager.catalog = Catalog({info.id: info, other.id: other}, [])
    scheduler = Scheduler(settings, manager)
    scheduler.refresh()
    jobs = iter(range(1000))
    answers: list[np.ndarray] = []

    async def request(model_id: str) -> float:
        job = f"job-{next(jobs)}"
        started = time.perf_counter()
        engine = await scheduler.acquire(job, model_id, ModelType.EMBEDDING, time.time())
        answers.append(await asyncio.to_thread(engine.embed, SHORT))  # type: ignore[attr-defined]
        sync(plan.device)
        scheduler.release(job)
        return (time.perf_counter() - started) * 1000

    try:
        ms = [await request(m) for m in (info.id, info.id, other.id, info.id, other.id, info.id)]
        await asyncio.sleep(0)
        return {"requests_ms": [round(x, 1) for x in ms], "first_load_ms": round(ms[0], 1), "warm_request_ms":
                round(ms[1], 1), "switch_ms": [round(x, 1) for x in ms[2:]], "loads": scheduler.stats(),
                "parked_answers_equal": bool(np.array_equal(answers[0], answers[3]) and
                                             np.array_equal(answers[0], answers[5]))}
    finally:
        await scheduler.close()


def scheduler_section(plan: Plan, infos: dict[str, ModelInfo], settings: Any) -> dict[str, Any]:
    base = _with(settings, model_cache_size=1, auto_unload_models=False)
    cold = asyncio.run(_switches(plan, infos["embedding"], _with(base, cpu_cache_gb=0.0)))
    warm = asyncio.run(_switches(plan, infos["embedding"], _with(base, cpu_cache_gb=8.0)))
    cold_ms, warm_ms = float(np.median(cold["switch_ms"])), float(np.median(warm["switch_ms"][1:]))
    return {"cold_no_cpu_cache": cold, "warm_parking": warm, "cold_switch_ms_median": round(cold_ms, 1),
            "warm_switch_back_ms_median": round(warm_ms, 1), "warm_over_cold": round(warm_ms / cold_ms, 3),
            "cold_switch_over_first_load": round(cold_ms / cold["first_load_ms"], 3)}
