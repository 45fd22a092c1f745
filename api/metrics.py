"""Prometheus metrics: per API process (requests, latency, time to first token, tokens), plus what
Redis and the workers' heartbeats say at scrape time (queue depth and oldest wait per model type,
model loads, reclaimed and dead-lettered jobs, running sequences). And `RequestLog`: the request id
(`X-Request-ID`) and one access log line per request.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.stats import queue_stats
from common.logs import request_context
from common.protocol import new_request_id

access_log = logging.getLogger("api.access")
REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llm_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("llm_http_request_duration_seconds", "Time to the response headers", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llm_time_to_first_token_seconds", "Streaming: request to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("llm_tokens", "Tokens processed", ["direction"], registry=r)
        self.queue = Gauge("llm_queue_jobs", "Jobs per model type", ["type", "state"], registry=r)
        self.oldest = Gauge("llm_queue_oldest_wait_seconds", "Age of the oldest waiting job", ["type"], registry=r)
        self.worker = Gauge("llm_worker_stat", "Gauges and counts from worker heartbeats", ["worker", "name"],
                            registry=r)

    def count_usage(self, usage: dict[str, Any]) -> None:
        self.tokens.labels("prompt").inc(int(usage.get("prompt_tokens", 0)))
        self.tokens.labels("completion").inc(int(usage.get("completion_tokens", 0)))

    async def render(self, redis: Any, workers: list[dict[str, Any]]) -> bytes:
        for row in await queue_stats(redis):
            self.queue.labels(row["type"], "waiting").set(row["waiting"])
            self.queue.labels(row["type"], "in_progress").set(row["in_progress"])
            self.oldest.labels(row["type"]).set(row["oldest_waiting_s"] or 0.0)
        self.worker.clear()
        for worker in workers:
            for name, value in worker.get("stats", {}).items():
                self.worker.labels(worker["id"], name).set(value)
        return bytes(generate_latest(self.registry))


class MeasureRequests:
    """ASGI middleware: count every answered request by route template and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def measured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.requests.labels(scope["method"], route, str(message["status"])).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, measured_send)


def request_id_of(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is sane (<= 128 chars of [A-Za-z0-9._:-]), else a new id."""
    sent = next((value for name, value in scope.get("headers") or [] if name.lower() == REQUEST_ID_HEADER), b"")
    return sent.decode() if _SANE_REQUEST_ID.fullmatch(sent) else new_request_id("req")


class RequestLog:
    """ASGI middleware, outside all others (see `api.app.App`): gives each request its id (in the log
    context for everything downstream, the job included, and in every response's `X-Request-ID`) and
    logs one access line when the response is over."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        start = time.perf_counter()
        status = 500  # if no response starts (an error that escapes every handler)

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        with request_context(request_id):
            try:
                await self.app(scope, receive, tagged_send)
            finally:
                duration_ms = round((time.perf_counter() - start) * 1000, 1)
                access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, duration_ms,
                                extra={"method": scope["method"], "path": scope["path"], "status": status,
                                       "duration_ms": duration_ms})
