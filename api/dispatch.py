"""Put a job on its model type's stream and wait for (or stream) its answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.results import ResultRouter
from common import keys
from common.deltas import merge_wire
from common.errors import DeadlineExceeded, InvalidRequest, Overloaded, Unavailable, from_wire
from common.logs import request_id_var
from common.protocol import DATA_FIELD, Job, Message, MessageKind, now_ms

# Atomically: refuse past the queue limit, else append the job and wake this API's read loop.
_SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'r', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return id
"""
# While a started answer is silent this long, check that the worker serving it is alive.
STALL_CHECK_S = 1.0


class Dispatcher:
    def __init__(self, redis: Redis, router: ResultRouter, ttl_s: int, max_queued: int) -> None:
        self.redis = redis
        self.router = router
        self.ttl_s = ttl_s
        self.max_queued = max_queued
        self._submit = redis.register_script(_SUBMIT)

    async def submit(self, job: Job) -> str:
        """Append the job (429 past the queue limit, 503 when Redis is away); its stream entry id.
        A job without a request id gets the current HTTP request's (set by `api.observe.Observe`)."""
        if job.request_id is None and (request_id := request_id_var.get()) is not None:
            job = dataclasses.replace(job, request_id=request_id)
        try:
            data = job.encode()
        except (TypeError, ValueError, OverflowError) as exc:  # what the request models let through by mistake
            raise InvalidRequest(f"the request holds a value that cannot be sent to a worker: {exc}",
                                 code="unencodable_request") from exc
        args: list[Any] = [self.max_queued, DATA_FIELD, data, keys.WAKE_STREAM_MAXLEN, job.id, self.ttl_s]
        try:
            stream = keys.job_stream(job.kind, job.model)
            entry_id = await self._submit(keys=[stream, self.router.wake_key], args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the job queue is unreachable: {exc}") from exc
        if entry_id is None:
            raise Overloaded(f"{self.max_queued} jobs for '{job.model}' are already waiting; retry shortly")
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def cancel(self, request_id: str) -> None:
        """Tell the workers this request's caller has gone (best effort)."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.set(keys.cancel_key(request_id), str(now_ms()), ex=self.ttl_s)

    async def call(self, job: Job, timeout_s: float) -> Message:
        """Submit and wait for the terminal message; errors from the worker are raised."""
        async for message in self.stream(job, timeout_s):
            if message.kind is MessageKind.RESULT:
                return message
        raise Unavailable("the worker ended the job without a result")

    async def stream(self, job: Job, timeout_s: float) -> AsyncIterator[Message]:
        """Yield the job's messages until the terminal one; raise its error, a 504 on deadline, or a
        503 when the worker serving a started answer died."""
        queue = self.router.open(job.id)
        finished = started = False
        held: Message | None = None  # taken from the queue while coalescing, answered next
        try:
            entry_id = await self.submit(job)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DeadlineExceeded(f"no answer within {timeout_s:g} s")
                try:
                    message = held if held is not None else await asyncio.wait_for(
                        queue.get(), min(remaining, STALL_CHECK_S))
                    held = None
                except TimeoutError:
                    if started and await self._owner_dead(job, entry_id):
                        raise Unavailable("the worker serving this request stopped; please retry") from None
                    continue
                if message.kind is MessageKind.DELTA and not queue.empty():
                    message, held = coalesce(message, queue)
                if message.kind is MessageKind.ERROR:
                    finished = True
                    raise from_wire(message.body)
                finished, started = message.terminal, True
                yield message
                if finished:
                    return
        finally:
            self.router.close(job.id)
            if not finished:
                await asyncio.shield(self.cancel(job.id))

    async def _owner_dead(self, job: Job, entry_id: str) -> bool:
        """The job is held by a worker whose heartbeat has expired."""
        try:
            pending: Any = await self.redis.xpending_range(keys.job_stream(job.kind, job.model), keys.WORKER_GROUP,
                                                           min=entry_id, max=entry_id, count=1)
            if not pending:
                return False
            return not await self.redis.exists(keys.worker_key(pending[0]["consumer"].decode()))
        except (RedisError, OSError):
            return False


def coalesce(first: Message, queue: asyncio.Queue[Message]) -> tuple[Message, Message | None]:
    """`first` and every delta queued behind it as one delta message (what piled up while the caller read
    slower than the worker wrote: one SSE write instead of many), and the non-delta message that ended the run."""
    deltas, held = [first], None
    while not queue.empty():
        message = queue.get_nowait()
        if message.kind is not MessageKind.DELTA:
            held = message
            break
        deltas.append(message)
    if len(deltas) == 1:
        return first, held
    choices = sorted((c for d in deltas for c in d.body["choices"]), key=lambda c: c["index"])  # stable
    return Message(MessageKind.DELTA, {**deltas[-1].body, "choices": merge_wire(choices)}), held
