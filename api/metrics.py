"""Prometheus metrics: per API process (requests, latency, time to first token, tokens; counted by
`api.observe.Observe` and the inference routes), plus what Redis and the workers' heartbeats say at scrape
time (queue depth and oldest wait per model type, model loads, reclaimed and dead-lettered jobs, running
sequences).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from api.queue_stats import queue_stats

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

    async def render(self, redis: Any, snap: Any) -> bytes:
        """The process's counters plus, at scrape time, the queues and the workers' gauges (`snap`: the
        directory's snapshot)."""
        for row in await queue_stats(redis, snap.models):
            self.queue.labels(row["type"], "waiting").set(row["waiting"])
            self.queue.labels(row["type"], "in_progress").set(row["in_progress"])
            self.oldest.labels(row["type"]).set(row["oldest_waiting_s"] or 0.0)
        self.worker.clear()
        for worker in snap.workers:
            for name, value in worker.get("stats", {}).items():
                self.worker.labels(worker["id"], name).set(value)
        return bytes(generate_latest(self.registry))
