"""The job queues as Redis holds them, for the status page and the metrics: a job stays in its stream until
the worker acknowledges and deletes it, so the stream length is waiting + in progress, and the consumer
group's pending list is the part being worked on.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.protocol import ModelType


def _entry_ms(entry_id: bytes | str | None) -> int | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def queue_stats(redis: Redis) -> list[dict[str, Any]]:
    """Per model type: jobs in the stream, in progress (pending in the group), waiting, and ages."""
    rows = []
    now_s, now_us = await redis.time()
    now_ms = now_s * 1000 + now_us // 1000
    for model_type in ModelType:
        stream = keys.job_stream(model_type.value)
        length = int(await redis.xlen(stream))
        in_progress, oldest_pending_ms, oldest_waiting_ms = 0, None, None
        if length:
            try:
                pending = await redis.xpending(stream, keys.WORKER_GROUP)
                in_progress = int(pending["pending"])
                oldest_pending_ms = _entry_ms(pending.get("min"))
                groups = await redis.xinfo_groups(stream)
            except ResponseError:  # no consumer group yet: nothing was delivered
                groups = []
            last = next((g["last-delivered-id"] for g in groups
                         if g["name"] in (keys.WORKER_GROUP, keys.WORKER_GROUP.encode())), b"0-0")
            last = last.decode() if isinstance(last, bytes) else last
            first = await redis.xrange(stream, min=f"({last}", count=1)
            oldest_waiting_ms = _entry_ms(first[0][0]) if first else None
        rows.append({
            "type": model_type.value, "stream": stream, "jobs": length, "in_progress": in_progress,
            "waiting": max(0, length - in_progress),
            "oldest_waiting_s": None if oldest_waiting_ms is None else max(0, now_ms - oldest_waiting_ms) / 1000,
            "oldest_in_progress_s": None if oldest_pending_ms is None else max(0, now_ms - oldest_pending_ms) / 1000,
        })
    return rows

