from __future__ import annotations

from fastapi import APIRouter

from api.responses import JSONBytes
from api.services import ServicesDep
from common.errors import Unavailable

router = APIRouter(tags=["health"])


@router.get("/v1/health")
async def health(services: ServicesDep) -> JSONBytes:
    """Ready when Redis answers; lists the live workers, the models and folders that were refused."""
    try:
        snap = await services.directory.snapshot()
    except Unavailable as exc:
        return JSONBytes({"status": "unavailable", "ready": False, "error": exc.message}, status_code=503)
    return JSONBytes({"status": "ok", "ready": True, "workers": snap.workers, "models": len(snap.models),
                      "problems": snap.problems})
