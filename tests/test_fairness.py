"""No request stuck behind another: a one-text request sent while a 2,048-text request runs is answered while
the big one is still running (micro-batches are served one at a time, the least-served job first), and a
caller of the big one who hangs up frees the worker within a second (its remaining sequences are dropped
before the next micro-batch)."""

from __future__ import annotations

import json
import random
import select
import socket
from typing import Any

import httpx
import redis

from common import keys
from common.protocol import ModelType
from tests.stack import Stack, wait_until

MINILM = "all-minilm-l6-v2"
WORDS = ("river", "mountain", "engine", "garden", "history", "silver", "window", "planet", "market", "season",
         "teacher", "bridge", "forest", "energy", "memory", "number", "problem", "picture", "thunder", "village")


def embedding_stats(stack: Stack) -> dict[str, Any]:
    worker: Any = stack.health()["workers"][0]
    return {k: v for k, v in worker["stats"].items() if k.startswith("embedding_")}


def long_texts(count: int, words: int) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


def send_raw(base_url: str, path: str, body: dict[str, Any]) -> socket.socket:
    """POST without reading the answer: the caller may hang up by closing the socket."""
    host, port = base_url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def read_by_a_worker(stack: Stack) -> int:
    """Embedding jobs of MINILM a worker has read and not yet answered (straight from Redis: the health page's
    gauges are up to a heartbeat and the API's cache old, and may still count an earlier test's job)."""
    db = redis.Redis.from_url(stack.redis_url)
    try:
        return int(db.xpending(keys.job_stream(str(ModelType.EMBEDDING), MINILM), keys.WORKER_GROUP)["pending"])
    finally:
        db.close()


def test_a_small_request_overtakes_a_huge_one_whose_hang_up_frees_the_worker(stack: Stack) -> None:
    before = embedding_stats(stack)
    big = send_raw(stack.base_url, "/v1/embeddings", {"model": MINILM, "input": long_texts(2048, 200)})
    try:
        # Read, so admitted before the small one: a worker admits the jobs it reads in order.
        wait_until(lambda: read_by_a_worker(stack) >= 1, 60, "the big job read by the worker")
        small = httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": MINILM, "input": "one word"}, timeout=60)
        assert small.status_code == 200 and len(small.json()["data"]) == 1
        assert not answered(big)  # the big one is still running
        wait_until(lambda: embedding_stats(stack)["embedding_jobs"] >= 1, 10, "the big job held by the worker")
        assert not answered(big)
    finally:
        big.close()  # hang up
    wait_until(lambda: embedding_stats(stack)["embedding_dropped"] > before.get("embedding_dropped", 0), 20,
               "the big job dropped")
    stats = embedding_stats(stack)
    assert 0 <= stats["embedding_last_drop_latency_ms"] <= 1000  # measured on the worker: caller gone -> dropped
    wait_until(lambda: embedding_stats(stack)["embedding_jobs"] == 0, 10, "the worker free")
