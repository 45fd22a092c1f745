"""The model scheduler in the real worker: switching by queue pressure, warm switches, idle unload,
failed loads, admin commands, and the out-of-memory and switching-memory drills (12, 13).

Real Redis, real API and worker processes, real tiny models; one model of each type resident
(`LLM_MODEL_CACHE_SIZE=1`), so every request for another model of a type is a switch.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.stack import RedisServer, Stack, wait_until

MINILM, QWEN_EMB = "all-minilm-l6-v2", "tiny-qwen3-embedding"
PARKABLE = "parkable-minilm"  # a copy whose weights the warm-switch test destroys on disk
BERT_RR, QWEN_RR = "tiny-bert-reranker", "tiny-qwen3-reranker"
CHAT_A, CHAT_B = "tiny-qwen2-chat-hf", "tiny-qwen3-chat-hf"
BROKEN = "broken-embedding"
ADMIN_KEY = "admin-secret"
OOM_TOKENS = 96  # drill 12: a batch over this many padded tokens "runs out of memory"
TEXTS = [f"sentence number {i} about {'apples' if i % 2 else 'the sea'}" for i in range(30)]


def copy_models(models_dir: Path, root: Path) -> Path:
    for name in (MINILM, QWEN_EMB, BERT_RR, QWEN_RR, "tiny-qwen2-chat-hf"):
        shutil.copytree(models_dir / name, root / name)
    shutil.copytree(models_dir / MINILM, root / PARKABLE)
    shutil.copytree(models_dir / "tiny-qwen3-chat", root / CHAT_B)
    (root / CHAT_B / "llm-interface.json").write_text('{"options": {"chat_engine": "transformers"}}')
    shutil.copytree(models_dir / MINILM, root / BROKEN)
    (root / BROKEN / "model.safetensors").write_bytes(b"\x00" * 64)  # found, but it cannot load
    return root


def start_stack(models: Path, tmp: Path, **env: str) -> tuple[RedisServer, Stack]:
    server = RedisServer(tmp / "redis")
    server.start()
    stack = Stack(server.url, models, tmp / "logs", env_extra={
        "LLM_MODEL_CACHE_SIZE": "1", "LLM_ADMIN_API_KEYS": ADMIN_KEY, "LLM_LOAD_RETRY_BACKOFF_S": "60", **env})
    stack.start(expect_models=len([p for p in models.iterdir() if p.is_dir()]))
    return server, stack


@pytest.fixture(scope="module")
def sched(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models = copy_models(models_dir, tmp_path_factory.mktemp("sched-models"))
    server, stack = start_stack(models, tmp_path_factory.mktemp("sched"), LLM_MODEL_IDLE_TTL_S="8",
                                LLM_MODELS_RESCAN_S="3600",  # the folder the warm-switch test empties stays listed
                                LLM_DEBUG_OOM_TOKENS=str(OOM_TOKENS))
    yield stack
    stack.stop()
    server.stop()


def stats(stack: Stack) -> dict[str, float]:
    workers: Any = stack.health()["workers"]
    return dict(workers[0]["stats"])


def loads(stack: Stack) -> int:
    s = stats(stack)
    return int(s.get("model_loads", 0) + s.get("model_loads_warm", 0))


def card(stack: Stack, model: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{stack.base_url}/v1/models/{model}", timeout=10).json()
    return data


def embed(stack: Stack, model: str, texts: list[str], timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/embeddings", json={"model": model, "input": texts,
                                                               "encoding_format": "float"}, timeout=timeout)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def concurrently(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_interleaved_requests_to_two_models_of_one_type_are_grouped(sched: Stack) -> None:
    refs = {m: vectors(embed(sched, m, TEXTS)) for m in (MINILM, QWEN_EMB)}
    before = loads(sched)
    order = [(MINILM if i % 2 == 0 else QWEN_EMB, i % len(TEXTS)) for i in range(60)]  # A B A B ...
    answers = concurrently([lambda m=m, i=i: embed(sched, m, [TEXTS[i]]) for m, i in order])
    for (model, i), response in zip(order, answers, strict=True):
        np.testing.assert_allclose(vectors(response)[0], refs[model][i], atol=1e-5)
    time.sleep(1.5)  # the worker's counters reach the API with its heartbeat (and a 1 s cache)
    switches = loads(sched) - before
    assert 1 <= switches <= 10, f"{switches} loads for 60 interleaved requests"


def test_a_parked_model_comes_back_without_reading_the_disk(sched: Stack) -> None:
    first = vectors(embed(sched, PARKABLE, TEXTS[:3]))
    vectors(embed(sched, QWEN_EMB, TEXTS[:1]))  # the switch parks PARKABLE in CPU memory
    wait_until(lambda: card(sched, PARKABLE)["state"] == "parked", 30, "the model parked")
    for weights in (sched.models_dir / PARKABLE).glob("*.safetensors"):
        weights.unlink()  # a load from the folder would fail now (a memory map of it stays valid)
    warm_before = stats(sched).get("model_loads_warm", 0)
    again = vectors(embed(sched, PARKABLE, TEXTS[:3]))
    np.testing.assert_allclose(again, first, atol=1e-6)
    wait_until(lambda: stats(sched).get("model_loads_warm", 0) > warm_before, 10, "a warm load counted")


def test_embedding_and_chat_models_are_served_at_the_same_time(sched: Stack) -> None:
    def chat() -> httpx.Response:
        return httpx.post(f"{sched.base_url}/v1/chat/completions", timeout=120, json={
            "model": CHAT_A, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})

    answers = concurrently([chat, chat, lambda: embed(sched, MINILM, TEXTS[:4]), chat,
                            lambda: embed(sched, MINILM, TEXTS[4:8])])
    assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers if r.status_code != 200]
    wait_until(lambda: card(sched, CHAT_A)["state"] == card(sched, MINILM)["state"] == "loaded", 10,
               "both resident: models of different types never evict each other")


def test_a_broken_model_fails_cleanly_while_the_others_work(sched: Stack) -> None:
    broken, good = concurrently([lambda: embed(sched, BROKEN, ["x"]), lambda: embed(sched, MINILM, ["y"])])
    assert broken.status_code == 500 and broken.json()["error"]["code"] == "model_load_failed"
    assert good.status_code == 200
    again = embed(sched, BROKEN, ["x"])  # within the back-off: the error at once, no new load
    assert again.status_code == 500 and "next try in" in again.json()["error"]["message"]
    wait_until(lambda: card(sched, BROKEN)["state"] == "failed", 10, "the failed state published")
    assert card(sched, BROKEN)["error"]


def test_idle_models_are_unloaded(sched: Stack) -> None:
    response = httpx.post(f"{sched.base_url}/v1/rerank", timeout=60,
                          json={"model": BERT_RR, "query": "q", "documents": ["a", "b"]})
    assert response.status_code == 200
    wait_until(lambda: card(sched, BERT_RR)["state"] == "loaded", 10, "the reranker resident")
    wait_until(lambda: card(sched, BERT_RR)["state"] == "available", 40, "the idle model unloaded")


def test_models_list_shows_placement_and_queue(sched: Stack) -> None:
    vectors(embed(sched, MINILM, ["z"]))
    wait_until(lambda: card(sched, MINILM)["placement"] is not None, 10, "the placement published")
    info = card(sched, MINILM)
    assert info["object"] == "model" and info["type"] == "embedding"
    assert info["placement"]["device"] == "cpu" and info["placement"]["weight_bytes"] > 0
    assert {"pinned", "waiting_jobs", "running_jobs"} <= set(info)


def test_admin_load_pin_and_unload(sched: Stack) -> None:
    url = f"{sched.base_url}/v1/admin/models/{QWEN_RR}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{url}/load", timeout=10).status_code == 401
    assert httpx.post(f"{sched.base_url}/v1/admin/models/nope/load", headers=admin, timeout=10).status_code == 404
    assert httpx.post(f"{url}/load", headers=admin, timeout=10).status_code == 202
    wait_until(lambda: card(sched, QWEN_RR)["state"] == "loaded", 60, "admin load")
    assert httpx.post(f"{url}/pin", headers=admin, timeout=10).status_code == 202
    wait_until(lambda: card(sched, QWEN_RR)["pinned"], 10, "pinned")
    assert httpx.post(f"{url}/unload", headers=admin, timeout=10).status_code == 202
    wait_until(lambda: card(sched, QWEN_RR)["state"] == "available", 30, "admin unload")
    assert card(sched, QWEN_RR)["pinned"] is False


def test_drill_12_a_batch_out_of_memory_is_retried_in_halves(sched: Stack) -> None:
    texts = [f"{t} and more words to make it longer" for t in TEXTS[:16]]  # one batch far over OOM_TOKENS
    splits = stats(sched).get("embedding_oom_splits", 0)
    together = vectors(embed(sched, MINILM, texts))
    one_by_one = np.vstack([vectors(embed(sched, MINILM, [t])) for t in texts[:3]])
    np.testing.assert_allclose(together[:3], one_by_one, atol=1e-5)
    wait_until(lambda: stats(sched).get("embedding_oom_splits", 0) > splits, 10, "the split counted")
    too_long = embed(sched, MINILM, ["word " * 200])  # alone over the limit: that job fails, clearly
    assert too_long.status_code == 500 and too_long.json()["error"]["code"] == "out_of_memory"
    assert embed(sched, MINILM, ["still serving"]).status_code == 200


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_drill_13_memory_stays_flat_over_100_switches(models_dir: Path, tmp_path: Path) -> None:
    """chat -> embed -> rerank, each request a switch of its type (no CPU cache: real unload + load)."""
    server, stack = start_stack(copy_models(models_dir, tmp_path / "models"), tmp_path, LLM_CPU_CACHE_GB="0")
    try:
        requests = [
            lambda m: httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=120, json={
                "model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
            lambda m: embed(stack, m, ["a sentence"]),
            lambda m: httpx.post(f"{stack.base_url}/v1/rerank", timeout=120,
                                 json={"model": m, "query": "q", "documents": ["a"]}),
        ]
        pairs = [(CHAT_A, CHAT_B), (MINILM, QWEN_EMB), (BERT_RR, QWEN_RR)]
        pid, rss = stack.workers[0].pid, []
        for step in range(106):  # 6 first loads, then 100 switches
            kind = step % 3
            response = requests[kind](pairs[kind][(step // 3) % 2])
            assert response.status_code == 200, response.text
            if step in (35, 105):
                rss.append(rss_mb(pid))
        wait_until(lambda: loads(stack) >= 106, 10, "every switch counted")
        assert rss[1] - rss[0] < 150, f"worker memory grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB"
    finally:
        stack.stop()
        server.stop()
