"""The status page at `/` and the JSON it polls, `GET /v1/status`."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError

from api.queue_stats import queue_stats
from api.responses import JSONBytes
from api.services import ServicesDep
from common.discovery import ModelInfo
from common.errors import Unavailable

router = APIRouter(tags=["status"])

PAGE = Path(__file__).resolve().parent.parent / "static" / "status.html"


@lru_cache(maxsize=1)
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def status_page() -> HTMLResponse:
    """A static page that polls `/v1/status` every 2 s."""
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@router.get("/v1/status")
async def status(request: Request, services: ServicesDep) -> JSONBytes:
    """Models (type, size, state, placement, memory), job queues per model type, live workers, and the
    requests this API process answered in the last minute."""
    throughput = request.app.state.request_counter.summary()
    try:
        snap = await services.directory.snapshot()
        queues = await queue_stats(services.redis, snap.models)
    except Unavailable as exc:
        return JSONBytes({"ready": False, "error": exc.message, "throughput": throughput}, status_code=503)
    except (RedisError, OSError) as exc:
        return JSONBytes({"ready": False, "error": f"Redis is unreachable: {exc}", "throughput": throughput},
                         status_code=503)
    now_ms = time.time() * 1000
    models = [_model_row(m, snap.states.get(m.id) or {}, snap.holders.get(m.id) or []) for m in snap.models.values()]
    workers = [{"id": w["id"], "types": w["types"], "last_seen_s": round(max(0.0, now_ms - w["ts_ms"]) / 1000, 1),
                "stats": w.get("stats") or {}} for w in snap.workers]
    return JSONBytes({"ready": True, "models": models, "queues": queues, "workers": workers,
                      "problems": snap.problems, "throughput": throughput})


def _model_row(info: ModelInfo, state: dict[str, Any], holders: list[dict[str, str]]) -> dict[str, Any]:
    """One model as the workers' schedulers report it: state, where it lives, the GPU budget its plan holds it
    to (weights, KV cache, context length) and the memory it holds now."""
    placement = state.get("placement") or {}
    where = placement.get("device")
    if where and placement.get("cpu_offload_bytes"):
        where = f"{where} + {placement['cpu_offload_bytes'] / 2**30:.1f} GiB offloaded"
    resident = state.get("state") in ("loading", "loaded", "unloading")
    return {"id": info.id, "type": str(info.type), "size_bytes": info.size_bytes, "dtype": info.dtype,
            "architecture": info.architecture, "max_length": info.max_length, "quantization": info.quantization,
            "state": state.get("state", "available"), "error": state.get("error") or placement.get("error"),
            "placement": where, "planned_gpu_bytes": placement.get("gpu_bytes") or None,
            "kv_cache_bytes": placement.get("kv_cache_bytes") or None, "context": placement.get("max_model_len"),
            "memory_bytes": placement.get("gpu_bytes") or placement.get("weight_bytes") if resident else None,
            "pinned": bool(state.get("pinned")), "waiting_jobs": int(state.get("waiting", 0)),
            "loading_seconds": state.get("loading_s"),
            "workers": [f"{h['worker']} ({h['state']})" for h in holders]}
