"""The worker process: per model type, a reader that admits jobs and a handler loop that serves them.

Model compute runs in threads, so the event loop keeps reading, replying and heart-beating.
SIGTERM/SIGINT: stop reading, let admitted jobs finish (up to a limit), deregister, exit; anything
unfinished stays pending in Redis for a restart with the same `LLM_WORKER_ID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common import keys
from common.logs import setup_logging
from common.redis_client import connect
from common.settings import Settings
from worker import cpus
from worker.admin import AdminCommands
from worker.engines.base import settle_heap
from worker.engines.registry import warm_up
from worker.handlers.base import Handler
from worker.handlers.chat import ChatHandler
from worker.handlers.embedding import EmbeddingHandler
from worker.handlers.rerank import RerankHandler
from worker.models import ModelManager
from worker.reclaim import HEARTBEAT_TTL_BEATS, Reclaimer
from worker.routing import Router
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport, default_worker_id

log = logging.getLogger(__name__)

IDLE_BLOCK_MS = 200  # also how soon a model newly routed here is read
DRAIN_LIMIT_S = 30.0


class Worker:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.models = ModelManager(settings)
        self.scheduler = Scheduler(settings, self.models)
        handler_types: list[type[Handler]] = [EmbeddingHandler, RerankHandler, ChatHandler]
        self.transport = WorkerTransport(redis, settings.worker_id or default_worker_id(), settings.result_ttl_s)
        self.handlers = {str(h.model_type): h(settings, self.models, self.scheduler, self.transport)
                         for h in handler_types}
        self.reclaimer = Reclaimer(redis, self.transport, self._admit, self._catalog_streams, settings.max_deliveries)
        self.router = Router(redis, self.transport, self.scheduler, self.models, settings)
        self.admin = AdminCommands(redis, self.scheduler, settings.pinned_model_ids, rescan=self._rescan)
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        self._rescan()
        await self.transport.setup()
        log.info("worker %s serving %d models from %s", self.transport.worker_id,
                 len(self.models.catalog.models), self.settings.models_dir)
        await self._beat()  # registered before the first read: nobody mistakes us for a dead worker
        settle_heap()
        await self.reclaimer.startup()
        for delivery in await self.transport.own_pending(self._catalog_streams()):  # ours from a previous run
            await self._admit(delivery)
        await self.router.step()
        self._warming = asyncio.create_task(asyncio.to_thread(self._warm_up))
        serving = [asyncio.create_task(h.run()) for h in self.handlers.values()]
        readers = [asyncio.create_task(self._consume(h)) for h in self.handlers.values()]
        heartbeat = asyncio.create_task(self._heartbeat())
        readers += [asyncio.create_task(self._reclaim()), asyncio.create_task(self.router.run())]
        serving.append(asyncio.create_task(self.scheduler.run()))
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([stop, *serving, *readers, heartbeat], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in done if t is not stop and not t.cancelled() and t.exception() is not None]
        for task in crashed:
            log.error("worker task failed; exiting", exc_info=task.exception())
        await _cancel([*readers, stop])
        if not crashed:
            await self._drain()
        await _cancel([*serving, heartbeat])
        await self.scheduler.close()
        await self.transport.deregister()
        if crashed:
            raise SystemExit(1)

    def _warm_up(self) -> None:
        """The engines' imports and caches ready while nothing waits (vLLM's take longer than its start)."""
        started = time.perf_counter()
        try:
            warm_up(self.models.catalog, self.settings)
        except Exception:  # the load that needs it will report it
            log.warning("warming the engines up failed", exc_info=True)
            return
        log.info("engines warmed up (imports, caches) in %.1f s", time.perf_counter() - started)

    def _rescan(self) -> None:
        """Read the models folder again and give the scheduler the new catalog."""
        self.models.rescan()
        self.scheduler.refresh()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_LIMIT_S
        while not all(h.idle() for h in self.handlers.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def _catalog_streams(self) -> list[str]:
        """Both job streams of every model this worker can serve."""
        return [s for m in self.models.catalog.models.values() for s in keys.job_streams(str(m.type), m.id)]

    async def _consume(self, handler: Handler) -> None:
        model_type = str(handler.model_type)
        while True:
            room = handler.capacity()
            if room <= 0:
                handler.room.clear()
                await handler.room.wait()
                continue
            try:
                deliveries = await self.transport.read(model_type, room, IDLE_BLOCK_MS)
            except (RedisError, OSError) as exc:  # Redis away or restarted empty: wait, re-create, go on
                log.warning("reading %s jobs failed (%s); retrying", model_type, exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(RedisError, OSError):
                    await self.transport.setup()
                continue
            for delivery in deliveries:
                await self._admit(delivery)
                await asyncio.sleep(0)  # small jobs are admitted on the loop: let finished batches start the next

    async def _admit(self, delivery: Delivery) -> None:
        crash_on = self.settings.debug_crash_on
        if crash_on and crash_on in repr(delivery.job.payload):  # fault injection for the poison-job drill
            log.critical("LLM_DEBUG_CRASH_ON matched job %s: exiting", delivery.job.id)
            os._exit(70)
        await self.handlers[delivery.job.kind].admit(delivery)

    async def _reclaim(self) -> None:
        """Take over the jobs of workers whose heartbeat has stopped."""
        while True:
            try:
                await self.reclaimer.sweep()
            except (RedisError, OSError) as exc:
                log.warning("reclaim sweep failed: %s", exc)
            await asyncio.sleep(self.settings.worker_heartbeat_s)

    async def _beat(self) -> None:
        """Publish the catalog and gauges, with an expiry of a few beats."""
        stats = collect_stats([*(h.stats for h in self.handlers.values()), self.scheduler.stats,
                               self.reclaimer.stats, lambda: {"load_claims": self.router.claims}])
        await self.transport.register(self.models.catalog, [h.model_type for h in self.handlers.values()],
                                      ttl_s=self.settings.worker_heartbeat_s * HEARTBEAT_TTL_BEATS, stats=stats,
                                      states=self.scheduler.states(), capacity=self.scheduler.capacity())

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        last_scan = loop.time()
        while True:
            if loop.time() - last_scan > self.settings.models_rescan_s:
                self._rescan()
                last_scan = loop.time()
            try:
                await self.admin.apply()
                await self._beat()
            except (RedisError, OSError):
                log.warning("heartbeat failed", exc_info=True)
            except Exception:  # a bug in a gauge or a command must not stop the worker's heart
                log.exception("heartbeat failed")
            await self._next_beat()

    async def _next_beat(self) -> None:
        """One beat later, or at once when a model's state changed (loading, loaded, gone), so that
        `/v1/models` and the other workers' routing see it without waiting a beat."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.scheduler.changed.wait(), self.settings.worker_heartbeat_s)
        self.scheduler.changed.clear()


def collect_stats(sources: list[Callable[[], Mapping[str, float]]]) -> dict[str, float]:
    """Every source's gauges; a source that raises is logged and its gauges left out of this beat."""
    stats: dict[str, float] = {}
    for source in sources:
        try:
            stats.update(source())
        except Exception:
            log.warning("gauges of %s left out of the heartbeat", getattr(source, "__qualname__", source),
                        exc_info=True)
    return stats

async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serve(settings: Settings) -> None:
    redis = connect(settings.effective_redis_url, socket_connect_timeout=2.0)
    worker = Worker(settings, redis)
    loop = asyncio.get_running_loop()
    # Threads that compute run on every CPU, whichever CPU the event loop is pinned to (worker/cpus.py).
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="worker", initializer=cpus.compute_anywhere))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    try:
        await worker.run()
    finally:
        await redis.aclose()


def main(settings: Settings) -> None:
    setup_logging(settings)
    try:  # uvicorn[standard] brings it; the API runs on it too
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
