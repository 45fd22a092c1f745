"""The Batch API's side of an API process: the file store, batch state, and the arq worker that runs the
batch lifecycle (api/batches/lifecycle.py) in this process's event loop. Routes reach it through `BatchDep`.

Why inside the API: batches need the files (uploaded here, on the data volume) and only I/O (file
reads, Redis), never the GPU; every API replica runs the same worker, and arq's job ids and the
batch lease make running it N times safe. The GPU worker only sees jobs on the batch lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from api.batches.files import FileStore
from api.batches.lifecycle import LifecycleQueue, dumps, loads, make_worker, supervise
from api.batches.runner import BatchEnv
from api.batches.schemas import BatchState, CreateBatchRequest, Status
from api.batches.store import BatchStore, new_batch_id
from api.services import Services
from common import keys
from common.errors import InvalidRequest, Unavailable

log = logging.getLogger(__name__)

CLOSE_LIMIT_S = 5.0


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from exc


class BatchService:
    def __init__(self, services: Services) -> None:
        settings = services.settings
        self.settings = settings
        self.files = FileStore(settings.data_dir)
        self.store = BatchStore(services.redis)
        self.env = BatchEnv(settings, services.redis, self.store, self.files, services.directory)
        pool = ConnectionPool.from_url(settings.effective_redis_url, socket_connect_timeout=2.0, socket_timeout=10.0)
        self.queue = LifecycleQueue(ArqRedis(pool, job_serializer=dumps, job_deserializer=loads,
                                         default_queue_name=keys.ARQ_QUEUE))
        self.worker = make_worker(self.env, self.queue)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(supervise(self.worker), name="batch-jobs")

    async def close(self) -> None:
        """Stop the lifecycle jobs: a running one is cancelled and queued again for the next process. The
        cancellation is repeated until it takes: a cancel that lands inside redis-py's connection handling can
        be swallowed, and arq's loop would then poll on, holding the process in its shutdown."""
        task, deadline = self._task, time.monotonic() + CLOSE_LIMIT_S
        while task is not None and not task.done() and time.monotonic() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        if task is not None and not task.done():
            log.error("the batch job worker did not stop within %.0f s; leaving it", CLOSE_LIMIT_S)
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.worker.close(), CLOSE_LIMIT_S)

    async def create(self, request: CreateBatchRequest) -> BatchState:
        meta = self.files.get(request.input_file_id)
        if meta.purpose != "batch":
            raise InvalidRequest(f"the file '{meta.id}' has purpose '{meta.purpose}', not 'batch'",
                                 param="input_file_id", code="invalid_input_file")
        batch_id = new_batch_id()
        await asyncio.to_thread(self.files.link_into, meta.id, self.env.input_path(batch_id))
        now = int(time.time())
        state = BatchState(id=batch_id, endpoint=request.endpoint, input_file_id=meta.id,
                           completion_window=request.completion_window, created_at=now,
                           expires_at=now + max(1, round(self.settings.batch_completion_window_s)),
                           metadata=request.metadata)
        with redis_errors():
            await self.store.create(state)
            await self.queue.validate(batch_id)
        return state

    async def get(self, batch_id: str) -> BatchState:
        with redis_errors():
            return await self.store.require(batch_id)

    async def page(self, after: str | None, limit: int) -> tuple[list[BatchState], bool]:
        with redis_errors():
            return await self.store.page(after, limit)

    async def cancel(self, batch_id: str) -> BatchState:
        with redis_errors():
            state = await self.store.require(batch_id)
            moved = await self.store.transition(batch_id, [Status.VALIDATING, Status.IN_PROGRESS], Status.CANCELLING)
            if moved is None:
                state = await self.store.require(batch_id)
                if state.status in (Status.CANCELLING, Status.CANCELLED):
                    return state
                raise InvalidRequest(f"a batch that is {state.status} cannot be cancelled", param="batch_id",
                                     code="batch_not_cancellable")
            await self.queue.stop(batch_id)
            return moved


async def get_batches(request: Request) -> BatchService:  # async: no thread hop (api/services.py)
    service: BatchService = request.app.state.batches
    return service


BatchDep = Annotated[BatchService, Depends(get_batches)]
