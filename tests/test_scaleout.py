"""Several workers on one Redis (real processes, tiny models): jobs go to a worker that has their model, a model
is loaded once where there is room, a hot model gets a second copy and loses it when idle, and a dead worker's
waiting jobs are served by another worker that has the model."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from common.discovery import scan_models
from common.settings import Settings
from tests.stack import SLOW_MARKER, RedisServer, Stack, wait_until
from worker.engines.embedding import EmbeddingEngine, shape_vector

MINILM, QWEN = "all-minilm-l6-v2", "tiny-qwen3-embedding"
TEXTS = [f"sentence number {i} about rivers and mountains" for i in range(20)]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, Stack]]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    stacks: list[Stack] = []

    def make(models: Path, **env: str) -> Stack:
        stack = Stack(server.url, models, tmp_path / "logs", env_extra={"LLM_MODEL_CACHE_SIZE": "1", **env})
        stacks.append(stack)
        return stack

    yield server, make  # type: ignore[misc]
    for stack in stacks:
        stack.stop()
    server.stop()


def folder(root: Path, models_dir: Path, *names: str) -> Path:
    root.mkdir(parents=True)
    for name in names:
        shutil.copytree(models_dir / name, root / name)
    return root


def embed(stack: Stack, model: str, text: str) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": model, "input": text,
                                                               "encoding_format": "float"}, timeout=120)


def worker_stats(stack: Stack) -> list[dict[str, Any]]:
    workers: Any = stack.health()["workers"]
    return [dict(w["stats"], id=w["id"]) for w in workers]


def holders(stack: Stack, model: str) -> list[str]:
    card = httpx.get(f"{stack.base_url}/v1/models/{model}", timeout=10).json()
    return [h["worker"] for h in card["workers"] if h["state"] in ("loading", "loaded")]


def start_two(stack: Stack, folders: tuple[Path, Path], models: int) -> None:
    stack.start_api()
    stack.start_worker(LLM_MODELS_DIR=str(folders[0]), LLM_WORKER_ID="w1")
    stack.start_worker(LLM_MODELS_DIR=str(folders[1]), LLM_WORKER_ID="w2")
    wait_until(lambda: len(stack.health().get("workers", [])) == 2 and stack.health()["models"] >= models, 90,
               "two workers registered")


def test_workers_with_different_folders_only_get_their_own_models_jobs(cluster: Any, models_dir: Path,
                                                                        tmp_path: Path) -> None:
    _, make = cluster
    first, second = folder(tmp_path / "a", models_dir, MINILM), folder(tmp_path / "b", models_dir, QWEN)
    stack = make(first)
    start_two(stack, (first, second), models=2)
    requests = [(MINILM if i % 2 == 0 else QWEN, f"text {i}") for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: embed(stack, *r), requests))
    failed = [(r, a.status_code, a.text[:200]) for r, a in zip(requests, answers, strict=True) if a.status_code != 200]
    assert failed == []
    assert {len(a.json()["data"][0]["embedding"]) for a in answers} == {384, 64}


def reference(models_dir: Path, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    """What one worker's engine answers, run here in-process: the same code, the same numbers."""
    info = scan_models(models_dir).models[model]
    engine = EmbeddingEngine(info, Settings(device="cpu"))
    engine.load()
    seqs = engine.inputs.tokenize(texts)
    vectors = [np.frombuffer(shape_vector(v, None), dtype="<f4") for v in engine.embed(seqs)]
    engine.unload()
    return dict(zip(texts, vectors, strict=True))


def test_two_workers_on_one_folder_load_each_model_once(cluster: Any, models_dir: Path, tmp_path: Path) -> None:
    """Two embedding models, one slot each, no CPU cache: 200 alternating requests, 16 at a time. One worker alone
    would switch back and forth; two split the models between them and load each once."""
    _, make = cluster
    shared = folder(tmp_path / "shared", models_dir, MINILM, QWEN)
    stack = make(shared, LLM_CPU_CACHE_GB="0", LLM_WORKER_HEARTBEAT_S="0.5")
    start_two(stack, (shared, shared), models=2)
    requests = [(MINILM if i % 2 == 0 else QWEN, TEXTS[i % len(TEXTS)]) for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: embed(stack, *r), requests))
    assert [a.status_code for a in answers] == [200] * 200
    expected = {m: reference(shared, m, TEXTS) for m in (MINILM, QWEN)}
    for (model, text), answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer.json()["data"][0]["embedding"], expected[model][text], atol=1e-5)
    loads = sum(int(w.get("model_loads", 0)) for w in worker_stats(stack))
    assert loads <= 4, worker_stats(stack)
    assert sorted(holders(stack, MINILM) + holders(stack, QWEN)) == ["w1", "w2"]  # one model each


def test_a_hot_model_gets_a_second_copy_and_loses_it_when_idle(cluster: Any, models_dir: Path,
                                                                tmp_path: Path) -> None:
    _, make = cluster
    shared = folder(tmp_path / "shared", models_dir, QWEN)
    stack = make(shared, LLM_REPLICA_AFTER_S="1", LLM_MODEL_IDLE_TTL_S="4")
    start_two(stack, (shared, shared), models=1)
    stop = threading.Event()
    seen: set[int] = set()

    def client(n: int) -> None:  # slow jobs (batches 20 ms apart), of many lengths: one worker falls behind
        while not stop.is_set():
            texts = [f"{SLOW_MARKER} {n} " + "word " * (4 + 9 * ((n + k) % 24)) for k in range(4)]
            assert httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": QWEN, "input": texts},
                              timeout=120).status_code == 200

    threads = [threading.Thread(target=client, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: seen.add(len(holders(stack, QWEN))) or 2 in seen, 60, "a second copy")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(holders(stack, QWEN)) == ["w1", "w2"]
    wait_until(lambda: holders(stack, QWEN) == [], 30, "the copies unloaded once idle")


def test_the_jobs_of_a_killed_worker_are_served_by_the_other(cluster: Any, models_dir: Path,
                                                              tmp_path: Path) -> None:
    """The worker that loaded the model (either may take the first load) has 32 jobs waiting when it is SIGKILLed:
    the other, whose folder has the model too, takes them over, loads the model and answers all 32."""
    _, make = cluster
    shared = folder(tmp_path / "shared", models_dir, QWEN)
    stack = make(shared)
    start_two(stack, (shared, shared), models=1)
    assert embed(stack, QWEN, "warm").status_code == 200
    # The answer can come back before the API's short cache (1 s) has read the worker's record saying "loaded".
    wait_until(lambda: len(holders(stack, QWEN)) == 1, 30, "the warm model published as held")
    (holder,) = holders(stack, QWEN)
    other = "w2" if holder == "w1" else "w1"
    results: dict[int, int] = {}

    def call(i: int) -> None:  # slow jobs (batches 20 ms apart) of many lengths: they queue up on w1
        texts = [f"{SLOW_MARKER} job {i} " + "word " * (4 + 9 * ((i + k) % 24)) for k in range(8)]
        results[i] = httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": QWEN, "input": texts},
                                timeout=120).status_code

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(int(w.get("embedding_jobs", 0)) for w in worker_stats(stack) if w["id"] == holder) >= 8,
               30, f"jobs waiting on {holder}")
    victim = stack.workers[0 if holder == "w1" else 1]  # started in the order w1, w2
    victim.kill()
    victim.wait()
    for thread in threads:
        thread.join(timeout=120)
    assert results == dict.fromkeys(range(32), 200)
    assert holders(stack, QWEN) == [other]
