from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

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


@router.get("/health/live")
async def live() -> JSONBytes:
    """Liveness: the process answers. No Redis call, no auth."""
    return JSONBytes({"status": "alive"})


@router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONBytes:
    """Readiness: Redis answers a PING (503 within its socket timeout when it does not)."""
    try:
        await services.redis.ping()
    except (RedisError, OSError) as exc:
        return JSONBytes({"ready": False, "error": f"Redis is unreachable: {exc}"}, status_code=503)
    return JSONBytes({"ready": True})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text format."""
    try:
        workers = (await services.directory.snapshot()).workers
        body = await request.app.state.metrics.render(services.redis, workers)
    except (Unavailable, RedisError, OSError):  # Redis away: this process's own metrics still count
        body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
