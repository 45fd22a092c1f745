from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from api.responses import JSONBytes
from api.services import ServicesDep
from common.errors import Unavailable

router = APIRouter(tags=["health"])


NO_WORKER = "no worker has registered yet: requests would find no model"


@router.get("/v1/health")
async def health(services: ServicesDep) -> JSONBytes:
    """Ready when Redis answers and a worker is registered (503 with the reason otherwise); lists the live
    workers, the models and the folders that were refused."""
    try:
        snap = await services.directory.snapshot()
    except Unavailable as exc:
        return JSONBytes({"status": "unavailable", "ready": False, "error": exc.message}, status_code=503)
    body = {"status": "ok" if snap.workers else "starting", "ready": bool(snap.workers), "workers": snap.workers,
            "models": len(snap.models), "problems": snap.problems}
    return JSONBytes(body if snap.workers else {**body, "error": NO_WORKER}, status_code=200 if snap.workers else 503)


@router.get("/health/live")
async def live() -> JSONBytes:
    """Liveness: the process answers. No Redis call, no auth."""
    return JSONBytes({"status": "alive"})


@router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONBytes:
    """Readiness, no key needed (it holds no data): Redis answers and at least one worker is registered; 503
    with the reason otherwise (within Redis's socket timeout when it does not answer)."""
    try:
        await services.redis.ping()
        snap = await services.directory.snapshot()
    except (RedisError, OSError, Unavailable) as exc:
        reason = exc.message if isinstance(exc, Unavailable) else f"Redis is unreachable: {exc}"
        return JSONBytes({"ready": False, "error": reason}, status_code=503)
    if not snap.workers:
        return JSONBytes({"ready": False, "error": NO_WORKER}, status_code=503)
    return JSONBytes({"ready": True})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text format."""
    try:
        snap = await services.directory.snapshot()
        body = await request.app.state.metrics.render(services.redis, snap)
    except (Unavailable, RedisError, OSError):  # Redis away: this process's own metrics still count
        body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
