"""GET /v1/status, the status page at /, the docs pages, and `llm-interface worker-health`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
from redis.asyncio import Redis

from api.observe import RequestCounter
from api.queue_stats import queue_stats
from common import keys
from common.discovery import ModelInfo
from common.protocol import ModelType
from tests.stack import ROOT, RedisServer, Stack, wait_until


def test_request_counter_keeps_one_minute() -> None:
    counter = RequestCounter(window_s=60)
    counter.add("/v1/embeddings", ok=True, now=1000.0)
    counter.add("/v1/embeddings", ok=False, now=1000.5)
    counter.add("/v1/chat/completions", ok=True, now=1030.0)
    summary = counter.summary(now=1030.0)
    assert summary["requests"] == 3 and summary["errors"] == 1
    rows = {r["endpoint"]: r for r in summary["endpoints"]}
    assert rows["/v1/embeddings"]["requests"] == 2 and rows["/v1/embeddings"]["errors"] == 1
    assert counter.summary(now=1061.0)["requests"] == 1  # the first two fell out of the window
    assert counter.summary(now=1100.0) == {"window_s": 60, "requests": 0, "errors": 0, "endpoints": []}


def test_status_json(stack: Stack) -> None:
    base = stack.base_url
    r = httpx.post(f"{base}/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a", "b"]}, timeout=120)
    assert r.status_code == 200
    httpx.post(f"{base}/v1/embeddings", json={"model": "no-such-model", "input": "a"}, timeout=30)
    status = httpx.get(f"{base}/v1/status", timeout=10).json()
    assert status["ready"] is True
    models = {m["id"]: m for m in status["models"]}
    assert models["all-minilm-l6-v2"]["type"] == "embedding" and models["tiny-qwen3-chat"]["type"] == "chat"
    assert models["all-minilm-l6-v2"]["size_bytes"] > 1_000_000
    def minilm_state() -> str:  # as the worker's scheduler reports it, with its heartbeat
        rows = httpx.get(f"{base}/v1/status", timeout=10).json()["models"]
        return str({m["id"]: m for m in rows}["all-minilm-l6-v2"]["state"])

    wait_until(lambda: minilm_state() == "loaded", 10, "the loaded state published")
    assert models["tiny-qwen3-chat"]["placement"] in (None, "cpu")
    # the planned budget, as /v1/models shows it too: the fixed KV cache (LLM_VLLM_KV_CACHE_GB) and the context
    # it allows (the model's whole window of 512 tokens), with the vLLM arguments derived from them
    def chat_row() -> dict[str, object]:
        return {m["id"]: m for m in httpx.get(f"{base}/v1/status", timeout=10).json()["models"]}["tiny-qwen3-chat"]

    wait_until(lambda: chat_row()["context"] == 512, 10, "the plan published")
    chat_card = httpx.get(f"{base}/v1/models/tiny-qwen3-chat", timeout=10).json()["placement"]
    assert chat_card["max_model_len"] == 512 and chat_card["kv_cache_bytes"] == int(0.0625 * 2**30)
    assert chat_card["engine_args"]["kv_cache_memory_bytes"] == chat_card["kv_cache_bytes"]
    assert chat_card["engine_args"]["max_model_len"] == 512 and chat_card["device"] == "cpu"
    queues = {q["type"]: q for q in status["queues"]}
    assert set(queues) == {"chat", "embedding", "reranker"}
    for q in queues.values():
        assert q["waiting"] >= 0 and q["in_progress"] >= 0 and q["jobs"] == q["waiting"] + q["in_progress"]
    assert status["workers"] and "embedding" in status["workers"][0]["types"]
    assert status["workers"][0]["last_seen_s"] < 30
    rows = {r["endpoint"]: r for r in status["throughput"]["endpoints"]}
    assert rows["/v1/embeddings"]["requests"] >= 2 and rows["/v1/embeddings"]["errors"] >= 1


async def test_queue_stats_counts_waiting_and_in_progress(redis_server: RedisServer) -> None:
    """Jobs on a stream: one delivered to a worker (in progress), two not yet (waiting), with ages.
    Uses database 1, which no worker of the stack reads."""
    client = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/1")
    stream = keys.job_stream("embedding", "m")
    models = {"m": ModelInfo("m", ModelType.EMBEDDING, "/m", 0, None, None, None, False)}
    try:
        await client.delete(stream)
        assert {q["type"]: q["jobs"] for q in await queue_stats(client, models)} == {"chat": 0, "embedding": 0,
                                                                                     "reranker": 0}
        await client.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        for n in range(3):
            await client.xadd(stream, {b"d": str(n).encode()})
        await client.xreadgroup(keys.WORKER_GROUP, "w1", {stream: ">"}, count=1)
        await asyncio.sleep(0.05)
        row = {q["type"]: q for q in await queue_stats(client, models)}["embedding"]
        assert (row["jobs"], row["in_progress"], row["waiting"]) == (3, 1, 2)
        assert row["oldest_waiting_s"] >= 0.04 and row["oldest_in_progress_s"] >= 0.04
    finally:
        await client.delete(stream)
        await client.aclose()


def test_status_page_and_docs(stack: Stack) -> None:
    page = httpx.get(f"{stack.base_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/status" in page.text and "<table id=\"models\">" in page.text
    for path, marker in (("/docs", "swagger"), ("/redoc", "redoc")):
        r = httpx.get(f"{stack.base_url}{path}", timeout=10)
        assert r.status_code == 200 and marker in r.text.lower(), path
    spec = httpx.get(f"{stack.base_url}/openapi.json", timeout=10).json()
    assert "/v1/status" in spec["paths"] and "/" not in spec["paths"]


def test_worker_health_command(stack: Stack) -> None:
    """The worker container's healthcheck: healthy while this host's worker heart-beats."""
    env = stack.env()
    ok = subprocess.run([sys.executable, "-m", "cli", "worker-health"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "healthy" in ok.stdout
    env["LLM_WORKER_ID"] = "no-such-worker"
    bad = subprocess.run([sys.executable, "-m", "cli", "worker-health"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unhealthy" in bad.stdout
    env.pop("LLM_WORKER_ID")
    env["LLM_REDIS_URL"] = "redis://127.0.0.1:1/0"
    down = subprocess.run([sys.executable, "-m", "cli", "worker-health"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "unreachable" in down.stdout
