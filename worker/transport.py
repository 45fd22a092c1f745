"""The worker's side of Redis: read jobs through the consumer group, reply, acknowledge, register."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from common import keys
from common.discovery import Catalog
from common.protocol import ATTEMPT_FIELD, DATA_FIELD, Job, Message, MessageKind, ModelType, WireError, now_ms

log = logging.getLogger(__name__)

# Batch-lane jobs a worker holds at once, per model type: enough to keep the engine busy (one being served,
# one ready; rounds of batch work are cut to a fraction of a second anyway: worker/handlers/batched.py), few enough
# to leave the rest in Redis for other workers and to keep a restart's redo small.
BATCH_JOBS_HELD = {str(ModelType.CHAT): 32}
DEFAULT_BATCH_JOBS_HELD = 2
EXPIRES_KEPT = 10_000  # result streams whose expiry time is remembered (older ones just get EXPIRE again)
BATCH_POLL_MS = 50  # while the batch share is full: how often to look whether it has room again
CLAIM_PAGE = 100

# Replies written at once: per reply i, KEYS[2i-1] its result stream and KEYS[2i] its job stream; ARGV: this run's
# attempt id, the result streams' MAXLEN, the consumer group, the two field names, then per reply its message,
# an expiry to set (0: none) and, for a terminal one, the job's entry id to acknowledge and delete ("" if not).
_REPLY = """
local attempt, maxlen, group, data_field, attempt_field = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for i = 1, #KEYS / 2 do
  local result, job, at = KEYS[2 * i - 1], KEYS[2 * i], 3 * i + 3
  redis.call('XADD', result, 'MAXLEN', '~', maxlen, '*', data_field, ARGV[at], attempt_field, attempt)
  if ARGV[at + 1] ~= '0' then redis.call('EXPIRE', result, ARGV[at + 1]) end
  if ARGV[at + 2] ~= '' then
    redis.call('XACK', job, group, ARGV[at + 2])
    redis.call('XDEL', job, ARGV[at + 2])
  end
end
return #KEYS / 2
"""


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    job: Job


@dataclass(frozen=True)
class _Reply:
    """A message waiting in the outbox, and the future its caller awaits (None: nobody waits, `send`)."""

    delivery: Delivery
    data: bytes
    terminal: bool
    future: asyncio.Future[None] | None


def _settle(future: asyncio.Future[None] | None, error: Exception | None) -> None:
    if future is None or future.done():  # nobody waits, or its caller was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def ensure_group(redis: Redis, stream: str) -> None:
    try:
        await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class WorkerTransport:
    def __init__(self, redis: Redis, worker_id: str, result_ttl_s: int) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.result_ttl_s = result_ttl_s
        # model type -> (interactive streams, batch lanes) of the models this worker reads (worker/routing.py)
        self._reading: dict[str, tuple[list[str], list[str]]] = {}
        # Per stream: "0" walks our own pending entries first (a restart with the same worker id, a stream read
        # again), then ">" for new ones.
        self._cursor: dict[str, str] = {}
        self._groups: set[str] = set()  # streams whose consumer group is known to exist
        self._held: set[tuple[str, str]] = set()  # (stream, entry id) read and not yet acknowledged
        self.attempt = f"{worker_id}:{uuid.uuid4().hex[:12]}".encode()  # this run, on every reply
        self._outbox: list[_Reply] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writing = False  # a terminal reply is being written at once, outside the outbox
        # Result stream -> when we last set its expiry: once per stream, refreshed while a long answer runs.
        self._expires: dict[str, float] = {}
        self._lost: dict[str, Exception] = {}  # job id -> why a message `send` queued for it was not written
        self._reply_script = redis.register_script(_REPLY)

    def set_reading(self, models: list[tuple[str, str]]) -> None:
        """The (model type, model id) whose jobs to read from now on; a stream newly read walks our own pending
        entries in it first."""
        reading: dict[str, tuple[list[str], list[str]]] = {}
        for model_type, model in sorted(models):
            interactive, lanes = reading.setdefault(model_type, ([], []))
            interactive.append(keys.job_stream(model_type, model))
            lanes.append(keys.batch_stream(model_type, model))
        before = {s for pair in self._reading.values() for group in pair for s in group}
        for stream in {s for pair in reading.values() for group in pair for s in group} - before:
            self._cursor[stream] = "0"
        self._reading = reading

    def reading(self, model_type: str) -> list[str]:
        """The interactive streams of this type being read."""
        return list(self._reading.get(model_type, ([], []))[0])

    async def setup(self) -> None:
        """After Redis came back (perhaps empty): make sure of the consumer groups again, walk our entries again."""
        self._groups.clear()
        self._cursor = dict.fromkeys(self._cursor, "0")

    async def _ensure_groups(self, streams: list[str]) -> None:
        for stream in streams:
            if stream not in self._groups:
                await ensure_group(self.redis, stream)
                self._groups.add(stream)

    async def read(self, model_type: str, count: int, block_ms: int) -> list[Delivery]:
        """Up to `count` jobs of the models of one type this worker reads, blocking up to `block_ms` for new ones:
        their interactive streams first; their batch lanes only when no interactive job waits, and within the
        batch share. Nothing to read: waits `block_ms` and returns none."""
        interactive, lanes = self._reading.get(model_type, ([], []))
        if not interactive:
            await asyncio.sleep(block_ms / 1000)
            return []
        await self._ensure_groups(interactive + lanes)
        held = sum(1 for s, _ in self._held if keys.is_batch_stream(s) and s in lanes)
        batch_room = min(count, BATCH_JOBS_HELD.get(model_type, DEFAULT_BATCH_JOBS_HELD) - held)
        if batch_room <= 0:
            return await self._read(interactive, count, BATCH_POLL_MS)
        found = await self._read(interactive, count, None)
        if found:
            return found
        return await self._read(interactive + lanes, batch_room, block_ms)

    async def own_pending(self, streams: list[str]) -> list[Delivery]:
        """Our own pending entries in these streams (a restart with the same worker id), never new ones."""
        out: list[Delivery] = []
        for stream in streams:
            cursor = "0"
            while True:
                try:
                    reply = await self.redis.xreadgroup(keys.WORKER_GROUP, self.worker_id, {stream: cursor},
                                                        count=CLAIM_PAGE)
                except ResponseError:  # no such stream or group: nothing of ours
                    break
                entries = reply[0][1] if reply else []
                if not entries:
                    break
                cursor = entries[-1][0].decode()
                for entry_id, fields in entries:
                    delivery = await self._decode(stream, entry_id.decode(), fields)
                    if delivery is not None and (stream, delivery.entry_id) not in self._held:
                        self._held.add((stream, delivery.entry_id))
                        out.append(delivery)
        return out

    async def _read(self, streams: list[str], count: int, block_ms: int | None) -> list[Delivery]:
        cursors = {s: self._cursor.get(s, "0") for s in streams}
        walking = any(c != ">" for c in cursors.values())  # our own pending entries: never block
        try:
            reply = await self.redis.xreadgroup(keys.WORKER_GROUP, self.worker_id, cursors,  # type: ignore[arg-type]
                                                count=count, block=None if walking else block_ms)
        except (RedisError, OSError):
            # Redis may come back from its AOF a second behind: an answer we gave may be lost and the job
            # pending for us again. Walk our pending entries once more (the ones we still hold are skipped).
            self._cursor = dict.fromkeys(self._cursor, "0")
            self._groups.clear()
            raise
        got = {raw.decode(): entries for raw, entries in reply or []}
        out: list[Delivery] = []
        for stream in streams:
            entries = got.get(stream, [])
            if cursors[stream] != ">":
                self._cursor[stream] = entries[-1][0].decode() if entries else ">"
            for entry_id, fields in entries:
                if (stream, entry_id.decode()) in self._held:
                    continue  # admitted already and still being served
                delivery = await self._decode(stream, entry_id.decode(), fields)
                if delivery is not None:
                    self._held.add((stream, delivery.entry_id))
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

    def holding(self, model: str) -> bool:
        """Whether a job of this model is read and not yet answered here."""
        return any(keys.parse_job_stream(stream)[1] == model for stream, _ in self._held)

    def hold(self, delivery: Delivery) -> None:
        """A job taken over from a dead worker (XCLAIM): admitted, not to be delivered again by a read."""
        self._held.add((delivery.stream, delivery.entry_id))

    def forget(self, deliveries: list[Delivery]) -> None:
        """Unanswered jobs dropped from memory: walk our pending entries again at the next read."""
        for delivery in deliveries:
            self._held.discard((delivery.stream, delivery.entry_id))
        self._cursor = dict.fromkeys(self._cursor, "0")

    async def ack(self, stream: str, entry_id: str, job_id: str | None = None) -> None:
        self._held.discard((stream, entry_id))
        if job_id is not None:
            self._lost.pop(job_id, None)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(stream, keys.WORKER_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    async def reply(self, delivery: Delivery, message: Message) -> None:
        """Write a message to the job's result stream; a terminal one also acknowledges the job.
        Returns once it is stored (or raises the write's error). Replies made in the same event-loop turn
        (e.g. one engine step's deltas for many chat jobs) share one write: one round trip for all of them."""
        self._raise_lost(delivery, message)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reply = _Reply(delivery, message.encode(), message.terminal, future)
        if message.terminal:
            self._held.discard((delivery.stream, delivery.entry_id))
        flushing = self._flusher is not None and not self._flusher.done()
        if message.terminal and not (flushing or self._outbox or self._writing):
            # One per job, often awaited one after another (a batch's results): write it now, no extra turn.
            self._writing = True
            try:
                await self._write([reply])
            finally:
                self._writing = False
            return
        self._queue(reply)
        await future

    def send(self, delivery: Delivery, message: Message) -> None:
        """A non-terminal message, written with the next batch without waiting for it (a chat step's deltas: no
        wake-up per token); a failed write is raised by the job's next `send` or `reply`, in order."""
        self._raise_lost(delivery, message)
        self._queue(_Reply(delivery, message.encode(), False, None))

    def _queue(self, reply: _Reply) -> None:
        self._outbox.append(reply)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="reply-flush")

    def _raise_lost(self, delivery: Delivery, message: Message) -> None:
        """Raise the failed write of a message `send` queued for this job, until its terminal message: an answer
        (done, result) raises it too, so that its caller answers with an error instead; the error goes out."""
        job_id = delivery.job.id
        lost = self._lost.pop(job_id, None) if message.terminal else self._lost.get(job_id)
        if lost is not None and message.kind is not MessageKind.ERROR:
            raise lost

    async def _flush(self) -> None:
        """Write the outbox, one call per batch; one batch at a time keeps every stream's messages in order."""
        batch: list[_Reply] = []
        try:
            await asyncio.sleep(0)  # let the rest of this turn's replies join
            while self._outbox:
                batch, self._outbox = self._outbox, []
                error: Exception | None = None
                try:
                    await self._write(batch)
                except Exception as exc:  # handed to every caller of the batch
                    error = exc
                    for reply in batch:  # their expiry may not be set: set it with the next message
                        self._expires.pop(reply.delivery.job.reply_to, None)
                        if reply.future is None:
                            self._lost.setdefault(reply.delivery.job.id, exc)
                for reply in batch:
                    _settle(reply.future, error)
        except asyncio.CancelledError:  # shutting down: nobody will write these
            for reply in batch + self._outbox:
                if reply.future is not None:
                    reply.future.cancel()
            raise

    async def _write(self, batch: list[_Reply]) -> None:
        """The batch in one call of `_REPLY` (atomic, one reply to parse: a MULTI of 2-4 commands per message
        cost the worker a quarter of its event loop at 64 streams)."""
        now = time.monotonic()
        stream_keys: list[str] = []
        args: list[Any] = [self.attempt, keys.RESULT_STREAM_MAXLEN, keys.WORKER_GROUP, DATA_FIELD, ATTEMPT_FIELD]
        for reply in batch:
            delivery, stream = reply.delivery, reply.delivery.job.reply_to
            stream_keys += (stream, delivery.stream)
            ttl = 0
            if reply.terminal:  # a full expiry after the last message; the job acknowledged in the same call
                self._expires.pop(stream, None)
                ttl = self._ttl_s(delivery)
            elif now - self._expires.get(stream, -math.inf) > self.result_ttl_s / 2:  # first, then now and then
                ttl = self._ttl_s(delivery)
                self._expires[stream] = now
            args += (reply.data, ttl, delivery.entry_id if reply.terminal else "")
        if len(self._expires) > EXPIRES_KEPT:  # streams left without a terminal message (cancelled jobs)
            self._expires = {s: t for s, t in self._expires.items() if now - t <= self.result_ttl_s / 2}
        await self._reply_script(keys=stream_keys, args=args)

    def _ttl_s(self, delivery: Delivery) -> int:
        if keys.is_batch_stream(delivery.stream):  # a batch's collector may read it much later
            return self.result_ttl_s + max(0, (delivery.job.deadline_ms - now_ms()) // 1000)
        return self.result_ttl_s

    async def cancelled(self, request_ids: list[str]) -> dict[str, int]:
        """Which of these requests' callers have gone, and when (ms since the epoch)."""
        if not request_ids:
            return {}
        values = await self.redis.mget([keys.cancel_key(r) for r in request_ids])
        return {r: int(v) for r, v in zip(request_ids, values, strict=True) if v is not None}

    async def register(self, catalog: Catalog, types: list[ModelType], ttl_s: float,
                       stats: Mapping[str, float] | None = None, states: dict[str, dict[str, Any]] | None = None,
                       capacity: Mapping[str, Any] | None = None) -> None:
        """Heartbeat: publish this worker's model catalog, states, room (`capacity`: budget bytes and per-type
        slots, for the other workers' routing) and gauges, expiring unless refreshed."""
        record = {"id": self.worker_id, "types": [str(t) for t in types], "ts_ms": int(time.time() * 1000),
                  "stats": stats or {}, "states": states or {}, "capacity": dict(capacity or {}),
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
