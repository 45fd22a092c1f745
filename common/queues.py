"""How many jobs a job stream holds and how old they are, read in two pipelined round trips for any number of
streams: the status page and metrics (the API) and the routing of models to workers (the worker) both ask.

A job stays in its stream until its worker acknowledges and deletes it, so the stream's length is waiting +
in progress, the consumer group's pending list is the part in progress, and the oldest waiting job is the
first entry after the group's last-delivered id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from common import keys


@dataclass(frozen=True)
class Backlog:
    jobs: int = 0  # waiting + in progress
    in_progress: int = 0  # delivered to a worker, not yet answered
    oldest_waiting_ms: int | None = None  # enqueue time (ms since the epoch) of the oldest waiting job
    oldest_in_progress_ms: int | None = None

    @property
    def waiting(self) -> int:
        return max(0, self.jobs - self.in_progress)

    def oldest_waiting_s(self, now_ms: int) -> float | None:
        return None if self.oldest_waiting_ms is None else max(0, now_ms - self.oldest_waiting_ms) / 1000

    def oldest_in_progress_s(self, now_ms: int) -> float | None:
        return None if self.oldest_in_progress_ms is None else max(0, now_ms - self.oldest_in_progress_ms) / 1000


def entry_ms(entry_id: bytes | str | None) -> int | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _last_delivered(groups: Any) -> str:
    if isinstance(groups, Exception):  # no consumer group yet: nothing was delivered
        return "0-0"
    names = (keys.WORKER_GROUP, keys.WORKER_GROUP.encode())
    last = next((g["last-delivered-id"] for g in groups if g["name"] in names), b"0-0")
    return last.decode() if isinstance(last, bytes) else str(last)


async def backlogs(redis: Redis, streams: Sequence[str]) -> dict[str, Backlog]:
    """Each stream's backlog (a stream that does not exist has none)."""
    if not streams:
        return {}
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
        pipe.xpending(stream, keys.WORKER_GROUP)
        pipe.xinfo_groups(stream)
    replies = await pipe.execute(raise_on_error=False)
    lengths = {s: replies[3 * i] for i, s in enumerate(streams)}
    pipe = redis.pipeline(transaction=False)
    busy = [s for s in streams if isinstance(lengths[s], int) and lengths[s] > 0]
    for stream in busy:
        pipe.xrange(stream, min=f"({_last_delivered(replies[3 * streams.index(stream) + 2])}", count=1)
    firsts = dict(zip(busy, await pipe.execute(raise_on_error=False), strict=True)) if busy else {}
    out: dict[str, Backlog] = {}
    for i, stream in enumerate(streams):
        length, pending = lengths[stream], replies[3 * i + 1]
        if not isinstance(length, int) or length == 0:
            out[stream] = Backlog()
            continue
        pending = pending if isinstance(pending, dict) else {"pending": 0, "min": None}
        first = firsts.get(stream)
        oldest = entry_ms(first[0][0]) if isinstance(first, list) and first else None
        out[stream] = Backlog(length, int(pending["pending"]), oldest, entry_ms(pending.get("min")))
    return out


async def now_ms(redis: Redis) -> int:
    """Redis's clock (stream entry ids are stamped with it)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
