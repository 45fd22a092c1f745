"""What routes need, built once per process in the app's lifespan and reached through `ServicesDep`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from api.directory import ModelDirectory
from api.dispatch import Dispatcher
from api.results import ResultRouter
from common.redis_client import connect
from common.settings import Settings

# A blocking XREAD waits up to results.BLOCK_MS; the socket must outwait it.
_READ_SOCKET_TIMEOUT_S = 30.0


@dataclass
class Services:
    settings: Settings
    redis: Redis
    router: ResultRouter
    dispatcher: Dispatcher
    directory: ModelDirectory

    @classmethod
    def create(cls, settings: Settings) -> Services:
        url = settings.effective_redis_url
        redis = connect(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        reader = connect(url, socket_connect_timeout=2.0, socket_timeout=_READ_SOCKET_TIMEOUT_S)
        router = ResultRouter(reader, api_id=uuid.uuid4().hex)
        dispatcher = Dispatcher(redis, router, settings.result_ttl_s, settings.max_queued_jobs)
        return cls(settings, redis, router, dispatcher, ModelDirectory(redis))

    async def start(self) -> None:
        await self.router.start()

    async def close(self) -> None:
        await self.router.stop()
        await self.router.redis.aclose()
        await self.redis.aclose()


async def get_services(request: Request) -> Services:
    """Async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
