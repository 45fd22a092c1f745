"""Put a job on its model type's stream and wait for (or stream) its answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.results import ResultRouter
from common import keys
from common.errors import DeadlineExceeded, Unavailable, from_wire
from common.protocol import DATA_FIELD, Job, Message, MessageKind


class Dispatcher:
    def __init__(self, redis: Redis, router: ResultRouter, ttl_s: int) -> None:
        self.redis = redis
        self.router = router
        self.ttl_s = ttl_s

    async def submit(self, job: Job) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(keys.job_stream(job.kind), {DATA_FIELD: job.encode()})
        pipe.xadd(self.router.wake_key, {b"r": job.id.encode()}, maxlen=keys.WAKE_STREAM_MAXLEN,
                  approximate=True)
        pipe.expire(self.router.wake_key, self.ttl_s)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the job queue is unreachable: {exc}") from exc

    async def cancel(self, request_id: str) -> None:
        """Tell the workers this request's caller has gone (best effort)."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.set(keys.cancel_key(request_id), b"1", ex=self.ttl_s)

    async def call(self, job: Job, timeout_s: float) -> Message:
        """Submit and wait for the terminal message; errors from the worker are raised."""
        async for message in self.stream(job, timeout_s):
            if message.kind is MessageKind.RESULT:
                return message
        raise Unavailable("the worker ended the job without a result")

    async def stream(self, job: Job, timeout_s: float) -> AsyncIterator[Message]:
        """Yield the job's messages until the terminal one; raise its error or a 504 on deadline."""
        queue = self.router.open(job.id)
        finished = False
        try:
            await self.submit(job)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DeadlineExceeded(f"no answer within {timeout_s:g} s")
                try:
                    message = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    continue
                if message.kind is MessageKind.ERROR:
                    finished = True
                    raise from_wire(message.body)
                finished = message.terminal
                yield message
                if finished:
                    return
        finally:
            self.router.close(job.id)
            if not finished:
                await asyncio.shield(self.cancel(job.id))
