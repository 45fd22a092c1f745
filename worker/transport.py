"""The worker's side of Redis: read jobs through the consumer group, reply, acknowledge, register."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import msgpack
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.discovery import Catalog, ModelType
from common.protocol import DATA_FIELD, Job, Message, WireError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    job: Job


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def ensure_group(redis: Redis, stream: str) -> None:
    try:
        await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class WorkerTransport:
    def __init__(self, redis: Redis, worker_id: str, types: list[ModelType], result_ttl_s: int) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.streams = [keys.job_stream(str(t)) for t in types]
        self.result_ttl_s = result_ttl_s
        # First walk our own pending entries (a restart with the same worker id), then new ones.
        self._cursor: dict[str, str] = dict.fromkeys(self.streams, "0")

    async def setup(self) -> None:
        for stream in self.streams:
            await ensure_group(self.redis, stream)

    async def read(self, stream: str, count: int, block_ms: int) -> list[Delivery]:
        """Up to `count` jobs from one stream, blocking up to `block_ms` for new ones."""
        cursor = self._cursor[stream]
        reply = await self.redis.xreadgroup(keys.WORKER_GROUP, self.worker_id, {stream: cursor},
                                            count=count, block=None if cursor != ">" else block_ms)
        entries = reply[0][1] if reply else []
        if cursor != ">":
            self._cursor[stream] = entries[-1][0].decode() if entries else ">"
        out: list[Delivery] = []
        for entry_id, fields in entries:
            delivery = await self._decode(stream, entry_id.decode(), fields)
            if delivery is not None:
                out.append(delivery)
        return out

    async def _decode(self, stream: str, entry_id: str, fields: dict[bytes, bytes] | None) -> Delivery | None:
        try:
            if not fields:  # deleted while pending
                raise WireError("empty entry")
            return Delivery(stream, entry_id, Job.decode(fields[DATA_FIELD]))
        except (WireError, KeyError) as exc:
            log.error("dropping undecodable job %s on %s: %s", entry_id, stream, exc)
            await self.ack(stream, entry_id)
            return None

    async def ack(self, stream: str, entry_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(stream, keys.WORKER_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    async def reply(self, delivery: Delivery, message: Message) -> None:
        """Write a message to the job's result stream; a terminal one also acknowledges the job."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(delivery.job.reply_to, {DATA_FIELD: message.encode()},
                  maxlen=keys.RESULT_STREAM_MAXLEN, approximate=True)
        pipe.expire(delivery.job.reply_to, self.result_ttl_s)
        if message.terminal:
            pipe.xack(delivery.stream, keys.WORKER_GROUP, delivery.entry_id)
            pipe.xdel(delivery.stream, delivery.entry_id)
        await pipe.execute()

    async def cancelled(self, request_ids: list[str]) -> set[str]:
        """Which of these requests' callers have gone."""
        if not request_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for r in request_ids:
            pipe.exists(keys.cancel_key(r))
        results = await pipe.execute()
        return {r for r, hit in zip(request_ids, results, strict=True) if hit}

    async def register(self, catalog: Catalog, types: list[ModelType], ttl_s: float) -> None:
        """Heartbeat: publish this worker's model catalog, expiring unless refreshed."""
        record = {"id": self.worker_id, "types": [str(t) for t in types], "ts_ms": int(time.time() * 1000),
                  "models": [m.to_dict() for m in catalog.models.values()],
                  "problems": [p.to_dict() for p in catalog.problems]}
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.worker_key(self.worker_id), msgpack.packb(record), px=int(ttl_s * 1000))
        pipe.sadd(keys.WORKERS_SET, self.worker_id)
        await pipe.execute()

    async def deregister(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.worker_key(self.worker_id))
        pipe.srem(keys.WORKERS_SET, self.worker_id)
        await pipe.execute()
