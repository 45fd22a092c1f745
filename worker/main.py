"""The worker process: one event loop that reads jobs, admits them, and serves batched rounds.

Model compute runs in a thread (`asyncio.to_thread`), so the loop keeps replying and heart-beating.
SIGTERM/SIGINT: stop reading, finish the round in hand, deregister, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from redis.asyncio import Redis

from common.discovery import ModelType
from common.errors import InvalidRequest
from common.protocol import Message
from common.settings import Settings
from worker.embed import EmbeddingHandler
from worker.models import ModelManager
from worker.transport import WorkerTransport, default_worker_id

log = logging.getLogger(__name__)

RESCAN_EVERY_S = 30.0
IDLE_BLOCK_MS = 1000


class Worker:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.types = [ModelType.EMBEDDING]
        self.transport = WorkerTransport(redis, settings.worker_id or default_worker_id(), self.types,
                                         settings.result_ttl_s)
        self.models = ModelManager(settings)
        self.handlers = {str(ModelType.EMBEDDING): EmbeddingHandler(settings, self.models, self.transport)}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        self.models.rescan()
        await self.transport.setup()
        heartbeat = asyncio.create_task(self._heartbeat())
        log.info("worker %s serving %d models from %s", self.transport.worker_id,
                 len(self.models.catalog.models), self.settings.models_dir)
        try:
            while not self.stopping.is_set():
                await self._step()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.transport.deregister()

    async def _step(self) -> None:
        busy = any(h.busy for h in self.handlers.values())
        for delivery in await self.transport.read(None if busy else IDLE_BLOCK_MS):
            handler = self.handlers.get(delivery.job.kind)
            if handler is None:
                error = InvalidRequest(f"this worker does not serve {delivery.job.kind} jobs")
                await self.transport.reply(delivery, Message.error(error))
                continue
            await handler.admit(delivery)
        for handler in self.handlers.values():
            if handler.busy:
                await handler.serve_round()

    async def _heartbeat(self) -> None:
        period = self.settings.worker_heartbeat_s
        last_scan = asyncio.get_running_loop().time()
        while True:
            if asyncio.get_running_loop().time() - last_scan > RESCAN_EVERY_S:
                self.models.rescan()
                last_scan = asyncio.get_running_loop().time()
            try:
                await self.transport.register(self.models.catalog, self.types, ttl_s=period * 5)
            except Exception:  # Redis away: keep trying, the main loop reports it too
                log.warning("heartbeat failed", exc_info=True)
            await asyncio.sleep(period)


async def serve(settings: Settings) -> None:
    redis = Redis.from_url(settings.effective_redis_url)
    worker = Worker(settings, redis)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    try:
        await worker.run()
    finally:
        await redis.aclose()


def main(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))
