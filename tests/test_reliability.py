"""Reliability drills (../shared/reference/reliability.md) against real processes the test kills.

Each drill has its own Redis and stack on a small models folder (MiniLM and a transformers-engine
chat model), so killing things never disturbs the shared session stack.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from sentence_transformers import SentenceTransformer

from common import keys
from tests.stack import RedisServer, Stack, wait_until

MINILM = "all-minilm-l6-v2"
HF_CHAT = "tiny-qwen2-chat-hf"
FAST = {"LLM_WORKER_HEARTBEAT_S": "0.2"}  # a dead worker is noticed after 0.6 s


@pytest.fixture(scope="module")
def small_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drill-models")
    for name in (MINILM, HF_CHAT):
        shutil.copytree(models_dir / name, root / name)
    broken = root / "broken-embedding"  # a valid config, weights that cannot be read
    shutil.copytree(models_dir / MINILM, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    return root


@pytest.fixture
def drill(small_models: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[RedisServer, Stack]]:
    env: dict[str, str] = {**FAST, **getattr(request, "param", {})}
    server = RedisServer(tmp_path / "redis")
    server.start()
    stack = Stack(server.url, small_models, tmp_path / "logs", env_extra=env)
    try:
        yield server, stack
    finally:
        stack.stop()
        server.stop()


def embed(stack: Stack, texts: list[str], timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": MINILM, "input": texts,
                                                               "encoding_format": "float"}, timeout=timeout)


def pending(server: RedisServer, kind: str = "embedding", model: str = MINILM) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.xpending(keys.job_stream(kind, model), keys.WORKER_GROUP)["pending"])
    except redis.ResponseError:
        return 0
    finally:
        client.close()


def worker_stats(stack: Stack) -> dict[str, int]:
    workers: Any = stack.health()["workers"]
    return {k: sum(w["stats"].get(k, 0) for w in workers) for k in ("reclaimed", "dead_lettered")}


def test_drill_1_sigkill_with_50_jobs_in_flight_loses_none(drill: tuple[RedisServer, Stack], models_dir: Path) -> None:
    server, stack = drill
    stack.start()
    filler = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)
    texts = [[f"job {i}: {filler}"] * 4 for i in range(50)]
    results: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        results[i] = embed(stack, texts[i], timeout=600)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    wait_until(lambda: pending(server) > 0, 30, "the worker to take jobs")
    stack.workers[0].kill()  # SIGKILL mid-work
    stack.workers[0].wait()
    stack.start_worker()  # a new worker (new id) takes over the dead one's jobs
    for t in threads:
        t.join(timeout=300)
    reference = SentenceTransformer(str(models_dir / MINILM), device="cpu").encode([t[0] for t in texts])
    for i in range(50):
        assert results[i].status_code == 200, results[i].text
        vectors = np.array([d["embedding"] for d in results[i].json()["data"]])
        assert vectors.shape == (4, 384)
        assert float(vectors[0] @ reference[i] / np.linalg.norm(reference[i])) >= 0.9999
    assert worker_stats(stack)["reclaimed"] > 0
    assert pending(server) == 0


def test_drill_2_sigkill_mid_chat_stream_ends_with_an_error_chunk(drill: tuple[RedisServer, Stack]) -> None:
    _, stack = drill
    stack.start()
    body = {"model": HF_CHAT, "messages": [{"role": "user", "content": "go"}], "max_tokens": 480, "n": 4,
            "temperature": 1.0, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line)
            if len(events) == 3:
                stack.workers[0].send_signal(signal.SIGKILL)
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "stopped" in events[-2]


@pytest.mark.parametrize("drill", [{"LLM_DEBUG_CRASH_ON": "POISON", "LLM_MAX_DELIVERIES": "2"}], indirect=True)
def test_drill_3_poison_job_is_dead_lettered(drill: tuple[RedisServer, Stack]) -> None:
    server, stack = drill
    stack.start()
    box: dict[str, httpx.Response] = {}
    caller = threading.Thread(target=lambda: box.setdefault("r", embed(stack, ["POISON pill"], timeout=120)))
    caller.start()
    deadline = time.monotonic() + 120
    while caller.is_alive() and time.monotonic() < deadline:
        if stack.workers[-1].poll() is not None:  # it crashed on the poison job: a new worker takes over
            stack.start_worker()
        time.sleep(0.1)
    caller.join(timeout=5)
    response = box["r"]
    assert response.status_code == 500 and response.json()["error"]["code"] == "dead_lettered"
    client = redis.Redis.from_url(server.url)
    assert client.xlen(keys.dead_letter_stream("embedding")) == 1
    client.close()
    assert embed(stack, ["a healthy request"]).status_code == 200  # the worker serves on


def test_drill_4_slow_but_alive_job_is_not_taken_over(drill: tuple[RedisServer, Stack]) -> None:
    _, stack = drill
    stack.start()
    stack.start_worker()  # a second worker sweeping for dead workers' jobs
    body = {"model": HF_CHAT, "messages": [{"role": "user", "content": "go"}], "max_tokens": 400, "n": 3,
            "temperature": 1.0}
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200 and len(response.json()["choices"]) == 3
    assert worker_stats(stack)["reclaimed"] == 0


def test_drill_6_redis_down_fails_fast_and_recovers(drill: tuple[RedisServer, Stack]) -> None:
    server, stack = drill
    stack.start()
    assert embed(stack, ["before"]).status_code == 200
    server.stop(signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: httpx.get(f"{stack.base_url}/v1/health", timeout=5).status_code == 503, 5, "readiness 503")
    assert time.monotonic() - started <= 5
    response = embed(stack, ["while down"], timeout=30)
    assert response.status_code == 503 and response.json()["error"]["type"] == "service_unavailable"
    server.start()  # empty: the worker re-creates its consumer groups and re-registers
    wait_until(lambda: httpx.get(f"{stack.base_url}/v1/health", timeout=5).json().get("models", 0) > 0, 30,
               "worker back")
    assert embed(stack, ["after"]).status_code == 200


@pytest.mark.parametrize("drill", [{"LLM_MAX_QUEUED_JOBS": "5"}], indirect=True)
def test_drill_8_past_the_queue_limit_429_then_queued_ones_complete(drill: tuple[RedisServer, Stack]) -> None:
    _, stack = drill
    stack.start()
    stack.workers[0].send_signal(signal.SIGSTOP)  # a stalled worker: jobs pile up
    try:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
                calls = [client.post("/v1/embeddings", json={"model": MINILM, "input": f"q{i}"}) for i in range(5)]
                first = [asyncio.ensure_future(c) for c in calls]
                await asyncio.sleep(1.0)
                over = await client.post("/v1/embeddings", json={"model": MINILM, "input": "one too many"})
                stack.workers[0].send_signal(signal.SIGCONT)
                return [over, *await asyncio.gather(*first)]

        over, *queued = asyncio.run(burst())
    finally:
        stack.workers[0].send_signal(signal.SIGCONT)
    assert over.status_code == 429 and over.headers.get("retry-after")
    assert over.json()["error"]["type"] == "rate_limit_error"
    assert [r.status_code for r in queued] == [200] * 5


@pytest.mark.parametrize("drill", [{"LLM_REQUEST_TIMEOUT_S": "1.5"}], indirect=True)
def test_drill_10_past_its_deadline_504_and_the_late_job_is_skipped(drill: tuple[RedisServer, Stack]) -> None:
    server, stack = drill
    stack.start()
    wait_until(lambda: embed(stack, ["warm up"]).status_code == 200, 60, "the model to load")
    stack.workers[0].send_signal(signal.SIGSTOP)
    try:
        response = embed(stack, ["too late"], timeout=30)
    finally:
        stack.workers[0].send_signal(signal.SIGCONT)
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    wait_until(lambda: pending(server) == 0, 30, "the expired job to be dropped")
    assert embed(stack, ["in time"]).status_code == 200


def test_drill_7_a_late_subscriber_still_gets_every_message(redis_server: RedisServer) -> None:
    """Messages written before the API's read loop looks at a result stream are all delivered, in order."""
    from api.results import ResultRouter
    from common.protocol import DATA_FIELD, Message, MessageKind

    async def scenario() -> list[Message]:
        client = aioredis.Redis.from_url(redis_server.url)
        router = ResultRouter(aioredis.Redis.from_url(redis_server.url), api_id="late-subscriber")
        await router.start()
        try:
            stream = keys.result_stream("late-1")
            for i in range(5):
                await client.xadd(stream, {DATA_FIELD: Message(MessageKind.DELTA, {"i": i}).encode()})
            await client.xadd(stream, {DATA_FIELD: Message(MessageKind.DONE, {}).encode()})
            queue = router.open("late-1")  # only now does anyone listen
            await client.xadd(router.wake_key, {b"r": b"late-1"})
            got = [await asyncio.wait_for(queue.get(), 10) for _ in range(6)]
            return got
        finally:
            await router.stop()
            await router.redis.aclose()
            await client.aclose()

    got = asyncio.run(scenario())
    assert [m.body.get("i") for m in got[:5]] == [0, 1, 2, 3, 4] and got[5].kind is MessageKind.DONE


def test_drill_11_a_model_that_fails_to_load(drill: tuple[RedisServer, Stack]) -> None:
    _, stack = drill
    stack.start()
    response = httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": "broken-embedding", "input": "x"},
                          timeout=60)
    assert response.status_code == 500 and response.json()["error"]["code"] == "model_load_failed"
    assert embed(stack, ["the others still work"]).status_code == 200
    wait_until(lambda: any(m["id"] == "broken-embedding" and m["state"] == "failed"
                           for m in httpx.get(f"{stack.base_url}/v1/models").json()["data"]), 10, "failed state")
    card = httpx.get(f"{stack.base_url}/v1/models/broken-embedding").json()
    assert card["state"] == "failed" and card["error"]
