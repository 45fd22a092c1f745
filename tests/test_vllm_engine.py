"""vLLM's two ways of running in the worker: in the worker process (the default on a CPU, what every other chat test
uses) and in vLLM's own engine processes (the default on a GPU). Both give the same tokens; the in-process engine
unloads and loads again in the same process (a switch back to a chat model) and still answers the same; two
in-process engines resident side by side answer as each does alone, and one's unload leaves the other serving; a
model kept busy is handed over to vLLM's processes mid-traffic without a failed request or a changed answer. On two
CPUs the engine thread and the event loop share one CPU while a chat model is loaded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import RedisServer, Stack, wait_until

CHAT, OTHER = "tiny-qwen3-chat", "tiny-qwen2-chat"
ADMIN_KEY = "admin-secret"
PROMPTS = ["Tell me about dragons.", "Count to five.", "What is a castle?"]


def start(models_dir: Path, tmp: Path, names: tuple[str, ...] = (CHAT,), **env: str) -> tuple[RedisServer, Stack]:
    models = tmp / "models"
    for name in names:
        shutil.copytree(models_dir / name, models / name)
    server = RedisServer(tmp / "redis")
    server.start()
    stack = Stack(server.url, models, tmp / "logs", env_extra={"LLM_ADMIN_API_KEYS": ADMIN_KEY,
                                                               "LLM_MODEL_CACHE_SIZE": "2", **env})
    stack.start(expect_models=len(names))
    return server, stack


@pytest.fixture(scope="module")
def in_process(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server, stack = start(models_dir, tmp_path_factory.mktemp("inprocess"), (CHAT, OTHER))
    yield stack
    stack.stop()
    server.stop()


def answer(stack: Stack, prompt: str, stream: bool = False, model: str = CHAT) -> str:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                            "temperature": 0, "ignore_eos": True}
    if not stream:
        r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])
    parts = []
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    parts.append(choices[0]["delta"]["content"])
    return "".join(parts)


def card(stack: Stack, model: str = CHAT) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{stack.base_url}/v1/models/{model}", timeout=10).json()
    return data


def unload(stack: Stack, model: str) -> None:
    url = f"{stack.base_url}/v1/admin/models/{model}"
    wait_until(lambda: card(stack, model).get("state") == "loaded", 30, "loaded")
    assert httpx.post(f"{url}/unload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).status_code == 202
    wait_until(lambda: card(stack, model).get("state") == "available", 60, "unloaded")


def test_vllm_in_its_own_processes_gives_the_same_tokens(in_process: Stack, models_dir: Path,
                                                         tmp_path: Path) -> None:
    expected = [answer(in_process, p) for p in PROMPTS]
    assert all(expected)
    server, separate = start(models_dir, tmp_path, LLM_VLLM_IN_PROCESS="false")
    try:
        assert [answer(separate, p) for p in PROMPTS] == expected
        assert answer(separate, PROMPTS[0], stream=True) == expected[0]
    finally:
        separate.stop()
        server.stop()


def test_the_in_process_engine_loads_again_after_an_unload(in_process: Stack) -> None:
    before = answer(in_process, PROMPTS[1], stream=True)
    unload(in_process, CHAT)
    assert answer(in_process, PROMPTS[1], stream=True) == before  # loaded again, in the same process
    assert answer(in_process, PROMPTS[1]) == before
    wait_until(lambda: in_process.health()["workers"][0]["stats"]["model_loads"] >= 2, 10,  # type: ignore[index]
               "the second load counted")


def test_two_in_process_engines_side_by_side(in_process: Stack) -> None:
    """Both models resident in one worker process (vLLM's globals shared): mixed concurrent streams answer as each
    model does alone, and unloading one leaves the other serving."""
    alone = {(m, p): answer(in_process, p, model=m) for m in (CHAT, OTHER) for p in PROMPTS}
    assert len(set(alone.values())) > 1
    mixed = list(alone) * 3
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda k: answer(in_process, k[1], stream=True, model=k[0]), mixed))
    assert together == [alone[k] for k in mixed]
    assert {h["worker"] for m in (CHAT, OTHER) for h in card(in_process, m)["workers"]} == {
        in_process.health()["workers"][0]["id"]}  # type: ignore[index]
    unload(in_process, CHAT)
    assert [answer(in_process, p, model=OTHER) for p in PROMPTS] == [alone[(OTHER, p)] for p in PROMPTS]
    assert answer(in_process, PROMPTS[0]) == alone[(CHAT, PROMPTS[0])]  # and the unloaded one comes back


def thread_cpus(pid: int) -> dict[int, set[int]]:
    """Each live thread of a process: the CPUs it may run on."""
    out = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        with contextlib.suppress(ProcessLookupError):
            out[tid] = os.sched_getaffinity(tid)
    return out


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="the engine computes with one thread on two CPUs")
def test_the_engine_thread_shares_the_event_loops_cpu_and_pool_threads_do_not(in_process: Stack) -> None:
    """worker/cpus.py on a running worker: the in-process engine and the event loop (the main thread) on one CPU,
    the pool threads (model loads, embedding batches) on both; with every chat model unloaded, the loop on both."""
    given = os.sched_getaffinity(0)
    for model in (CHAT, OTHER):  # both resident
        assert answer(in_process, PROMPTS[0], model=model)
    worker = in_process.workers[0].pid
    threads = thread_cpus(worker)
    loop = threads[worker]
    assert len(loop) == 1 and loop < given
    assert sum(cpus == loop for cpus in threads.values()) >= 2  # the loop and the engine thread
    assert any(cpus == given for cpus in threads.values())  # the pool's threads
    for model in (CHAT, OTHER):
        unload(in_process, model)  # once its card says loaded (the card lags the load by up to a heartbeat)
    wait_until(lambda: os.sched_getaffinity(worker) == given, 30, "the event loop back on every CPU")
    assert answer(in_process, PROMPTS[0])  # and pinned again with the next load
    assert len(os.sched_getaffinity(worker)) == 1


def test_a_busy_model_is_handed_over_to_vllms_processes(models_dir: Path, tmp_path: Path) -> None:
    server, stack = start(models_dir, tmp_path, LLM_VLLM_HANDOVER_AFTER_S="1")
    try:
        expected = {p: answer(stack, p) for p in PROMPTS}
        log = stack.logdir / "worker0.log"
        answers: list[tuple[str, str]] = []
        stop = threading.Event()

        def client(n: int) -> None:  # four streams always running: the model stays busy
            while not stop.is_set():
                prompt = PROMPTS[(n + len(answers)) % len(PROMPTS)]
                answers.append((prompt, answer(stack, prompt, stream=True)))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: "handed over to vLLM's engine processes" in log.read_text(errors="replace"), 240,
                       "the handover")
            served = len(answers)
            wait_until(lambda: len(answers) >= served + 12, 60, "answers from vLLM's processes")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert all(a == expected[p] for p, a in answers), [a for a in answers if a[1] != expected[a[0]]][:2]
        assert answer(stack, PROMPTS[0]) == expected[PROMPTS[0]]
    finally:
        stack.stop()
        server.stop()
