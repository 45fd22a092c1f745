"""What the status page shows: the job queues in Redis, and requests this API process answered recently.

Throughput is counted per API process (each replica reports its own): a pure ASGI middleware notes every
answered `POST /v1/...` request in one-second buckets kept for a minute. Queue figures come from Redis:
a job stays in its stream until the worker acknowledges and deletes it, so the stream length is
waiting + in progress, and the consumer group's pending list is the part being worked on.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import keys
from common.protocol import ModelType

WINDOW_S = 60


@dataclass
class RequestCounter:
    """Answered requests per endpoint over the last `window_s` seconds, in one-second buckets."""

    window_s: int = WINDOW_S
    _buckets: deque[tuple[int, Counter[str]]] = field(default_factory=deque)

    def add(self, endpoint: str, ok: bool, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append((second, Counter()))
            self._expire(second)
        counts = self._buckets[-1][1]
        counts[endpoint] += 1
        if not ok:
            counts[f"{endpoint} errors"] += 1

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()

    def summary(self, now: float | None = None) -> dict[str, Any]:
        self._expire(int(time.monotonic() if now is None else now))
        total: Counter[str] = Counter()
        for _, counts in self._buckets:
            total.update(counts)
        endpoints = sorted(k for k in total if not k.endswith(" errors"))
        rows = [{"endpoint": e, "requests": total[e], "errors": total[f"{e} errors"],
                 "per_s": round(total[e] / self.window_s, 3)} for e in endpoints]
        return {"window_s": self.window_s, "requests": sum(r["requests"] for r in rows),
                "errors": sum(r["errors"] for r in rows), "endpoints": rows}


class CountRequests:
    """ASGI middleware: count answered `POST /v1/*` requests (status < 400 is a success)."""

    def __init__(self, app: ASGIApp, counter: RequestCounter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter.add(path, ok=message["status"] < 400)
            await send(message)

        await self.app(scope, receive, counting_send)


def install(app: FastAPI) -> None:
    """Add the request counter to `app` (read back through `counter(app)`)."""
    app.state.request_counter = RequestCounter()
    app.add_middleware(CountRequests, counter=app.state.request_counter)


def counter(app: Any) -> RequestCounter:
    found: RequestCounter | None = getattr(app.state, "request_counter", None)
    return found or RequestCounter()


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

