"""The job queues as Redis holds them, for the status page and the metrics: per model type (the models'
interactive streams together) and per model (`common/queues.py` reads them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from common import keys
from common.discovery import ModelInfo
from common.protocol import ModelType
from common.queues import Backlog, backlogs, now_ms


async def queue_stats(redis: Redis, models: Mapping[str, ModelInfo]) -> list[dict[str, Any]]:
    """Per model type: jobs in its models' streams, in progress (pending in the group), waiting, and ages."""
    streams = {m.id: keys.job_stream(str(m.type), m.id) for m in models.values()}
    found = await backlogs(redis, list(streams.values()))
    now = await now_ms(redis)
    rows = []
    for model_type in ModelType:
        mine = [found[streams[m.id]] for m in models.values() if m.type is model_type]
        total = Backlog(sum(b.jobs for b in mine), sum(b.in_progress for b in mine),
                        min((b.oldest_waiting_ms for b in mine if b.oldest_waiting_ms), default=None),
                        min((b.oldest_in_progress_ms for b in mine if b.oldest_in_progress_ms), default=None))
        rows.append({"type": model_type.value, "jobs": total.jobs, "in_progress": total.in_progress,
                     "waiting": total.waiting, "oldest_waiting_s": total.oldest_waiting_s(now),
                     "oldest_in_progress_s": total.oldest_in_progress_s(now)})
    return rows
