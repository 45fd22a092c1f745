"""A batch's state and progress in Redis, changed only in atomic steps.

- The hash `llm:batch:{id}` holds the batch object, the counts, the input cursor and the committed
  sizes of the output and error files. `:done` is a bitmap of finished input lines; `:jobs` holds the
  batch's jobs in flight (job id -> the input lines it carries).
- Status changes are compare-and-set (`transition`), so a cancel and a finish never both win.
- One process at a time drives a batch: it holds `:lease` (a token with an expiry it keeps renewing),
  and every progress step (`commit`) is a MULTI that only executes while that lease is still its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from api.batches.schemas import FINAL, STAMP, BatchState, Status
from common import keys
from common.errors import NotFound
from common.protocol import DATA_FIELD, Job, now_ms

LEASE_MS = 15_000
CANCEL_TTL_S = 86_400  # a worker skips a cancelled batch job that it reads up to a day later

_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class LeaseLost(Exception):
    """Another process drives this batch now (our lease expired): stop touching it."""


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Lease:
    batch_id: str
    token: str

    @property
    def key(self) -> str:
        return keys.batch_lease_key(self.batch_id)


@dataclass
class Commit:
    """One atomic step of a batch: lines finished (counts, file sizes, done bits), input read (cursor),
    jobs sent to the workers (lane entry + record) or retired (record and result stream removed)."""

    completed: int = 0
    failed: int = 0
    out_bytes: int | None = None
    err_bytes: int | None = None
    cursor: tuple[int, int] | None = None  # (next line, its byte offset)
    done_lines: list[int] = field(default_factory=list)
    submit: list[tuple[Job, dict[str, Any]]] = field(default_factory=list)  # job, {"lines": [[n, off]], "tries"}
    retire: list[str] = field(default_factory=list)  # job ids
    cancel: list[str] = field(default_factory=list)  # job ids the workers should skip

    def __bool__(self) -> bool:
        return bool(self.completed or self.failed or self.cursor or self.done_lines or self.submit
                    or self.retire or self.cancel or self.out_bytes is not None or self.err_bytes is not None)


class BatchStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)

    async def create(self, state: BatchState) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.batch_key(state.id), mapping=cast(Any, state.to_fields()))
        pipe.zadd(keys.BATCH_INDEX, {state.id: now_ms()})
        pipe.sadd(keys.BATCH_ACTIVE, state.id)
        await pipe.execute()

    async def get(self, batch_id: str) -> BatchState | None:
        raw = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(keys.batch_key(batch_id)))
        return BatchState.from_fields(raw) if raw else None

    async def require(self, batch_id: str) -> BatchState:
        state = await self.get(batch_id)
        if state is None:
            raise NotFound(f"No such batch: '{batch_id}'", param="batch_id", code="batch_not_found")
        return state

    async def page(self, after: str | None, limit: int) -> tuple[list[BatchState], bool]:
        """Newest first; `after` is the last id of the previous page."""
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(keys.BATCH_INDEX, after)
            if rank is None:
                raise NotFound(f"No such batch: '{after}'", param="after", code="batch_not_found")
            start = int(rank) + 1
        ids = [i.decode() for i in await self.redis.zrevrange(keys.BATCH_INDEX, start, start + limit)]
        states = [s for s in [await self.get(i) for i in ids[:limit]] if s is not None]
        return states, len(ids) > limit

    async def active(self) -> list[str]:
        return sorted(i.decode() for i in await cast(Any, self.redis.smembers(keys.BATCH_ACTIVE)))

    async def transition(self, batch_id: str, allowed: Iterable[Status], to: Status,
                         **fields: str | int) -> BatchState | None:
        """Move to `to` if the status is one of `allowed` (stamping its time); None when it was not."""
        key, allowed = keys.batch_key(batch_id), set(allowed)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await cast(Awaitable[dict[bytes, bytes]], pipe.hgetall(key))
                    if not raw or BatchState.from_fields(raw).status not in allowed:
                        return None
                    update: dict[str, str | int] = {"status": str(to), **fields}
                    if to in STAMP:
                        update[STAMP[to]] = int(time.time())
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, mapping=cast(Any, update))
                    if to in FINAL:
                        pipe.srem(keys.BATCH_ACTIVE, batch_id)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        return await self.get(batch_id)

    async def set_fields(self, batch_id: str, **fields: str | int) -> None:
        await cast(Awaitable[int], self.redis.hset(keys.batch_key(batch_id), mapping=cast(Any, fields)))

    # --- the lease: one driver per batch ---

    async def acquire(self, batch_id: str) -> Lease | None:
        lease = Lease(batch_id, uuid.uuid4().hex)
        taken = await self.redis.set(lease.key, lease.token, nx=True, px=LEASE_MS)
        return lease if taken else None

    async def refresh(self, lease: Lease) -> None:
        if not await self._refresh(keys=[lease.key], args=[lease.token, LEASE_MS]):
            raise LeaseLost(lease.batch_id)

    async def release(self, lease: Lease) -> None:
        await self._release(keys=[lease.key], args=[lease.token])

    # --- progress ---

    async def inflight(self, batch_id: str) -> dict[str, dict[str, Any]]:
        raw = await cast(Any, self.redis.hgetall(keys.batch_jobs_key(batch_id)))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def done_bitmap(self, batch_id: str) -> bytes:
        return cast(bytes, await self.redis.get(keys.batch_done_key(batch_id)) or b"")

    async def commit(self, lease: Lease, step: Commit) -> None:
        """Apply one step, all or nothing, only while `lease` is still held (else LeaseLost)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(lease.key)
            if (await pipe.get(lease.key) or b"").decode() != lease.token:
                raise LeaseLost(lease.batch_id)
            pipe.multi()  # type: ignore[no-untyped-call]
            self._queue(pipe, lease.batch_id, step)
            try:
                await pipe.execute()
            except WatchError as exc:
                raise LeaseLost(lease.batch_id) from exc

    @staticmethod
    def _queue(pipe: Any, batch_id: str, step: Commit) -> None:
        key, jobs_key = keys.batch_key(batch_id), keys.batch_jobs_key(batch_id)
        if step.completed:
            pipe.hincrby(key, "completed", step.completed)
        if step.failed:
            pipe.hincrby(key, "failed", step.failed)
        mapping: dict[str, int] = {}
        if step.out_bytes is not None:
            mapping["out_bytes"] = step.out_bytes
        if step.err_bytes is not None:
            mapping["err_bytes"] = step.err_bytes
        if step.cursor is not None:
            mapping["next_line"], mapping["next_offset"] = step.cursor
        if mapping:
            pipe.hset(key, mapping=mapping)
        if step.done_lines:
            args: list[Any] = []
            for line in step.done_lines:
                args += ["SET", "u1", line, 1]
            pipe.execute_command("BITFIELD", keys.batch_done_key(batch_id), *args)
        for job, record in step.submit:
            pipe.xadd(keys.batch_stream(job.kind, job.model), {DATA_FIELD: job.encode()})
            pipe.hset(jobs_key, job.id, orjson.dumps(record))
        if step.retire:
            pipe.hdel(jobs_key, *step.retire)
            pipe.unlink(*[keys.result_stream(j) for j in step.retire])
        for job_id in step.cancel:
            pipe.set(keys.cancel_key(job_id), str(now_ms()), ex=CANCEL_TTL_S)


def line_done(bitmap: bytes, line: int) -> bool:
    """Whether `line`'s bit is set in a Redis bitmap (bit 0 is the most significant bit of byte 0)."""
    byte = line >> 3
    return byte < len(bitmap) and bool(bitmap[byte] & (0x80 >> (line & 7)))
