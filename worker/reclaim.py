"""Jobs of dead workers: take them over, or dead-letter them after too many deliveries.

A worker is dead when its heartbeat key (`llm:worker:{id}`, refreshed every
`LLM_WORKER_HEARTBEAT_S`, expiring after `HEARTBEAT_TTL_BEATS` beats) is gone. Only a dead worker's
pending entries are claimed, so a slow but alive job is never taken over. An entry delivered
`LLM_MAX_DELIVERIES` times (it crashed every worker that took it) goes to `llm:dead:{type}` and its
caller gets an error. A chat job whose stream had already started is not run again (the caller
would see text twice): its caller gets an error chunk instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.errors import EngineFailure, Unavailable
from common.protocol import DATA_FIELD, Job, Message, ModelType, WireError
from worker.transport import Delivery, WorkerTransport

log = logging.getLogger(__name__)

HEARTBEAT_TTL_BEATS = 3
CLAIM_PAGE = 100

Admit = Callable[[Delivery], Awaitable[None]]


class Reclaimer:
    def __init__(self, redis: Redis, transport: WorkerTransport, admit: Admit, streams: Callable[[], list[str]],
                 max_deliveries: int) -> None:
        self.redis = redis
        self.transport = transport
        self.admit = admit  # hands a job to its type's handler
        self.streams = streams  # the job streams of the models this worker can serve (both lanes)
        self.max_deliveries = max_deliveries
        self.reclaimed = 0
        self.dead_lettered = 0
        self._missing: set[str] = set()  # consumers whose heartbeat was gone at the last sweep

    def stats(self) -> dict[str, float]:
        return {"reclaimed": self.reclaimed, "dead_lettered": self.dead_lettered}

    async def startup(self) -> None:
        """Before reading our own backlog again (same worker id): dead-letter what crashed us too often."""
        for stream in self.streams():
            for entry in await self._pending(stream, self.transport.worker_id):
                if int(entry["times_delivered"]) >= self.max_deliveries:
                    await self._dead_letter(stream, entry["message_id"].decode(), int(entry["times_delivered"]))

    async def sweep(self) -> None:
        """A consumer counts as dead when its heartbeat is gone at two sweeps in a row (one beat apart): a worker
        whose beat came late, its loop held up a moment by a load, keeps its jobs."""
        suspects: set[str] = set()
        for stream in self.streams():
            dead = await self._dead_consumers(stream)
            suspects.update(dead)
            for consumer in dead:
                if consumer in self._missing:
                    await self._take_over(stream, consumer)
        self._missing = suspects

    async def _dead_consumers(self, stream: str) -> list[str]:
        try:
            summary: Any = await self.redis.xpending(stream, keys.WORKER_GROUP)
        except ResponseError:  # no such stream or group yet: nobody holds anything there
            return []
        consumers = [c["name"].decode() for c in summary.get("consumers", []) if int(c["pending"]) > 0]
        others = [c for c in consumers if c != self.transport.worker_id]
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for consumer in others:
            pipe.exists(keys.worker_key(consumer))
        alive = await pipe.execute()
        return [c for c, up in zip(others, alive, strict=True) if not up]

    async def _pending(self, stream: str, consumer: str) -> list[dict[str, Any]]:
        try:
            return cast(list[dict[str, Any]], await self.redis.xpending_range(
                stream, keys.WORKER_GROUP, min="-", max="+", count=CLAIM_PAGE, consumername=consumer))
        except ResponseError:  # no such stream or group yet
            return []

    async def _take_over(self, stream: str, consumer: str) -> None:
        while entries := await self._pending(stream, consumer):
            for entry in entries:
                entry_id, delivered = entry["message_id"].decode(), int(entry["times_delivered"])
                if delivered >= self.max_deliveries:
                    await self._dead_letter(stream, entry_id, delivered)
                    continue
                claimed = await self.redis.xclaim(stream, keys.WORKER_GROUP, self.transport.worker_id,
                                                  min_idle_time=0, message_ids=[entry_id])
                for raw_id, fields in claimed:
                    await self._resume(stream, raw_id.decode(), fields)
        await self.redis.xgroup_delconsumer(stream, keys.WORKER_GROUP, consumer)
        log.warning("took over the jobs of dead worker %s on %s", consumer, stream)

    async def _resume(self, stream: str, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        delivery = await self._delivery(stream, entry_id, fields)
        if delivery is None:
            return
        self.reclaimed += 1
        self.transport.hold(delivery)  # ours now: a walk of our pending entries must not deliver it again
        if delivery.job.kind == str(ModelType.CHAT) and await self.redis.xlen(delivery.job.reply_to) > 0:
            error = Unavailable("the worker generating this answer died; please retry")
            await self.transport.reply(delivery, Message.error(error))
            return
        await self.admit(delivery)

    async def _delivery(self, stream: str, entry_id: str, fields: dict[bytes, bytes] | None) -> Delivery | None:
        try:
            if not fields:
                raise WireError("empty entry")
            return Delivery(stream, entry_id, Job.decode(fields[DATA_FIELD]))
        except (WireError, KeyError) as exc:
            log.error("dropping undecodable job %s on %s: %s", entry_id, stream, exc)
            await self.transport.ack(stream, entry_id)
            return None

    async def _dead_letter(self, stream: str, entry_id: str, delivered: int) -> None:
        entries = await self.redis.xrange(stream, min=entry_id, max=entry_id)
        fields = entries[0][1] if entries else {}
        dead_stream = keys.dead_letter_stream(keys.parse_job_stream(stream)[0])
        await self.redis.xadd(dead_stream, {**fields, b"delivered": str(delivered).encode()},
                              maxlen=keys.DEAD_LETTER_MAXLEN, approximate=True)
        self.dead_lettered += 1
        log.error("job %s on %s dead-lettered after %d deliveries", entry_id, stream, delivered)
        delivery = await self._delivery(stream, entry_id, fields)
        if delivery is not None:
            error = EngineFailure(f"the job crashed the worker {delivered} times; it was set aside",
                                  code="dead_lettered")
            await self.transport.reply(delivery, Message.error(error))
