"""The one middleware that watches every request, outside all the others (see `api.app.App`): it gives the
request its id (in the log context for everything downstream, the job included, and in every response's
`X-Request-ID`), counts it in Prometheus by route template and status with its time to the response headers,
notes answered `POST /v1/...` requests in the recent-requests counter of the status page (per API process,
one-second buckets kept for a minute), and logs one access line when the response is over.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import Metrics
from common.logs import request_context
from common.protocol import new_request_id

access_log = logging.getLogger("api.access")
REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
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


def request_id_of(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is sane (<= 128 chars of [A-Za-z0-9._:-]), else a new id."""
    sent = next((value for name, value in scope.get("headers") or [] if name.lower() == REQUEST_ID_HEADER), b"")
    return sent.decode() if _SANE_REQUEST_ID.fullmatch(sent) else new_request_id("req")


class Observe:
    """ASGI middleware: request id, Prometheus counts and latency, the recent-requests counter, the access line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, recent: RequestCounter) -> None:
        self.app = app
        self.metrics = metrics
        self.recent = recent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        start = time.perf_counter()
        status = 500  # if no response starts (an error that escapes every handler)

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._count(scope, status, time.perf_counter() - start)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        with request_context(request_id):
            try:
                await self.app(scope, receive, observed_send)
            finally:
                duration_ms = round((time.perf_counter() - start) * 1000, 1)
                access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, duration_ms,
                                extra={"method": scope["method"], "path": scope["path"], "status": status,
                                       "duration_ms": duration_ms})

    def _count(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(scope["method"], route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        if scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            self.recent.add(scope["path"], ok=status < 400)
