"""Admin routes (LLM_ADMIN_API_KEYS): load, unload and pin models on the workers.

Commands go to the workers through Redis (see worker/admin.py) and are applied within a heartbeat;
the answer is 202 with what was asked, and `GET /v1/models` shows the effect (state, pinned).
Unloading also unpins. A model that is busy (jobs waiting or running) is not unloaded.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from redis.exceptions import RedisError

from api.responses import JSONBytes
from api.services import ServicesDep
from common import keys
from common.errors import ModelNotFound, Unavailable

router = APIRouter(prefix="/v1/admin/models", tags=["admin"])

Action = Literal["load", "unload", "pin", "unpin"]


async def _command(services: Any, model_id: str, action: Action) -> JSONBytes:
    snap = await services.directory.snapshot(max_age_s=0.0)
    if model_id not in snap.models:
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    try:
        async with services.redis.pipeline(transaction=True) as pipe:
            if action in ("pin", "unpin", "unload"):
                pipe.hset(keys.PINS, model_id, "1" if action == "pin" else "0")
            if action in ("load", "unload"):
                pipe.xadd(keys.ADMIN_STREAM, {"action": action, "model": model_id},
                          maxlen=keys.ADMIN_STREAM_MAXLEN, approximate=True)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from exc
    return JSONBytes({"object": "model.command", "model": model_id, "action": action, "status": "accepted"},
                     status_code=202)


@router.post("/{model_id}/load", status_code=202)
async def load(model_id: str, services: ServicesDep) -> JSONBytes:
    """Load the model now (as a request for it would)."""
    return await _command(services, model_id, "load")


@router.post("/{model_id}/unload", status_code=202)
async def unload(model_id: str, services: ServicesDep) -> JSONBytes:
    """Unpin and unload the model (kept when jobs wait for it or run on it)."""
    return await _command(services, model_id, "unload")


@router.post("/{model_id}/pin", status_code=202)
async def pin(model_id: str, services: ServicesDep) -> JSONBytes:
    """Keep the model resident: loaded when it fits, never evicted or idle-unloaded."""
    return await _command(services, model_id, "pin")


@router.delete("/{model_id}/pin", status_code=202)
async def unpin(model_id: str, services: ServicesDep) -> JSONBytes:
    return await _command(services, model_id, "unpin")
