"""Model switching through the worker's scheduler (worker/scheduler.py, policy in worker/policy/):

1. cold switch: the latency of a request to a model that is not resident, with no CPU cache
   (`LLM_CPU_CACHE_GB=0`: evict, load from disk, serve), against a raw transformers load of the same
   model (tokenizer + weights, as the engine loads them) in this process (goal <= 1.2x), and against a
   warm request (model loaded);
2. warm switch: the same with the default CPU cache, where the evicted model is parked and comes back
   without a disk read; warm switch / cold switch (goal <= 0.3x);
3. loads per 100 interleaved requests over two embedding models (A, B, A, B, ...), one at a time and
   8 in flight, with LLM_MODEL_CACHE_SIZE=1 (with and without parking) and 2. Loads are counted from
   the worker's log ("loaded <model> in <s> s (from disk | warm...)"), which also gives its load time;
4. vLLM chat: two chat models, one slot, requests A, B, A, B (each a switch): the cold load with an empty
   vLLM cache, the next one (the cache filled), the switch back; for vLLM in the worker process and eager
   (the CPU default), in vLLM's own processes, and in-process compiled (where the compile cache under
   LLM_DATA_DIR makes the second load cheaper). --smoke: the default mode only.

    python -m bench switching            # two copies of all-MiniLM-L6-v2, 100 requests per cell
    python -m bench switching --smoke    # two tiny test embedding models, 12 requests per cell (seconds)

It starts its own redis-server, worker and API per cache size (tests/stack.py), prints tables and writes
JSON to bench/results/switching.json (switching-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.util import machine, output_path, write_json
from tests.model_factory import copy_minilm, make_chat_model, make_qwen3_embedding
from tests.stack import RedisServer, Stack

LOADED = re.compile(r"loaded (\S+) in ([0-9.]+) s \((from disk|warm)")
TEXT = "How far is the moon from the earth?"
MODELS = ("model-a", "model-b")
CHAT_MODELS = ("chat-a", "chat-b")
CHAT_ROUNDS = 4  # A, B four times: seven switches
CHAT_MODES = {"in-process, eager (the CPU default)": {},
              "vLLM's own processes, eager": {"LLM_VLLM_IN_PROCESS": "false"},
              "in-process, compiled": {"LLM_VLLM_ENFORCE_EAGER": "false"}}


@dataclass(frozen=True)
class Plan:
    base: str
    interleaved: int
    switches: int
    warm: int
    raw_loads: int


FULL = Plan(base="all-MiniLM-L6-v2 (copied twice)", interleaved=100, switches=10, warm=10, raw_loads=8)
SMOKE = Plan(base="tiny test Qwen3 embedding (two seeds)", interleaved=12, switches=2, warm=3, raw_loads=2)


def build_models(root: Path, smoke: bool) -> Path:
    for seed, name in enumerate(MODELS):
        if smoke:
            make_qwen3_embedding(root / name, seed=seed + 1)
        else:
            copy_minilm(root / name)
    return root


def loads(stack: Stack, kind: str | None = None) -> list[tuple[str, float]]:
    """(model, seconds) of every load ("from disk" or "warm"; None: both) the worker has logged so far."""
    text = (stack.logdir / "worker0.log").read_text(encoding="utf-8", errors="replace")
    return [(m.group(1), float(m.group(2))) for m in LOADED.finditer(text) if kind in (None, m.group(3))]


def request_ms(client: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    client.post("/v1/embeddings", json={"model": model, "input": TEXT}).raise_for_status()
    return (time.perf_counter() - started) * 1000


def switch_times(stack: Stack, plan: Plan) -> dict[str, Any]:
    """With a cache of one: first requests (tokenizer + weights), switches, warm requests (ms)."""
    a, b = MODELS
    with httpx.Client(base_url=stack.base_url, timeout=600) as client:
        first_a = request_ms(client, a)
        warm = [request_ms(client, a) for _ in range(plan.warm)]
        first_b = request_ms(client, b)
        switches = [request_ms(client, MODELS[i % 2]) for i in range(plan.switches)]
        warm += [request_ms(client, b) for _ in range(plan.warm)]
    logged = [s * 1000 for _, s in loads(stack)][2:]  # the switches' loads (cold or warm), not the first two
    return {"first_request_ms": {"model_a": round(first_a, 1), "model_b (evicts a)": round(first_b, 1)},
            "switch_request_ms": [round(x, 1) for x in switches],
            "switch_request_ms_median": round(statistics.median(switches), 1),
            "warm_request_ms_median": round(statistics.median(warm), 2),
            "worker_logged_load_ms_median": round(statistics.median(logged), 1) if logged else None,
            "loads_logged": len(logged)}


async def interleaved(base_url: str, count: int, in_flight: int) -> float:
    """Seconds for `count` requests alternating between the two models, `in_flight` at a time."""
    gate = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(i: int) -> None:
            async with gate:
                response = await client.post("/v1/embeddings", json={"model": MODELS[i % 2], "input": TEXT})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return time.perf_counter() - started


def loads_per_run(stack: Stack, plan: Plan, cache: int) -> list[dict[str, Any]]:
    rows = []
    for in_flight in (1, 8):
        before = len(loads(stack))
        seconds = asyncio.run(interleaved(stack.base_url, plan.interleaved, in_flight))
        time.sleep(0.3)  # the log line is written before the reply, but let the file catch up
        counted = len(loads(stack)) - before
        rows.append({"cache_size": cache, "cpu_cache": stack.env_extra["LLM_CPU_CACHE_GB"] != "0",
                     "in_flight": in_flight, "requests": plan.interleaved, "loads": counted,
                     "loads_per_100": round(100 * counted / plan.interleaved, 1), "seconds": round(seconds, 2),
                     "requests_per_s": round(plan.interleaved / seconds, 1)})
    return rows


def with_stack(models: Path, workdir: Path, cache: int, work: Any, cpu_cache_gb: str = "8", name: str = "",
               **env: str) -> Any:
    name = name or f"{cache}-{cpu_cache_gb}"
    redis = RedisServer(workdir / f"redis-{name}")
    redis.start()
    stack = Stack(redis.url, models, workdir / f"logs-{name}", env_extra={
        "LLM_MODEL_CACHE_SIZE": str(cache), "LLM_LOG_LEVEL": "INFO", "LLM_CPU_CACHE_GB": cpu_cache_gb, **env})
    try:
        stack.start(expect_models=len(MODELS))
        return work(stack)
    finally:
        stack.stop()
        redis.stop()


def chat_switches(models: Path, workdir: Path, modes: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Per vLLM mode, a fresh stack and an empty vLLM cache: chat requests A, B, A, B, ... with one slot, each
    a switch (the unloads that end in a full garbage collection among them: every fourth); the worker's logged
    load seconds and each request's milliseconds."""
    def work(stack: Stack) -> tuple[list[float], list[float]]:
        with httpx.Client(base_url=stack.base_url, timeout=900) as client:
            times = [chat_ms(client, m) for m in CHAT_MODELS * CHAT_ROUNDS]
        return times, [round(s, 3) for _, s in loads(stack)]

    rows = []
    for n, (mode, env) in enumerate(modes.items()):
        times, logged = with_stack(models, workdir, 1, work, cpu_cache_gb="0", name=f"chat-{n}",
                                   VLLM_CACHE_ROOT=str(workdir / f"vllm-cache-{n}"), **env)
        rows.append({"mode": mode, "env": env, "load_s": logged, "request_ms": [round(t, 1) for t in times],
                     "first_load_s": logged[0], "second_load_s": logged[1], "switch_back_load_s": logged[2],
                     "switch_request_ms_median": round(statistics.median(times[1:]), 1),
                     "switch_request_ms_max": round(max(times[1:]), 1)})
    return rows


def chat_ms(client: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    client.post("/v1/chat/completions", json={"model": model, "max_tokens": 4, "messages": [
        {"role": "user", "content": TEXT}]}).raise_for_status()
    return (time.perf_counter() - started) * 1000


def raw_load_ms(folder: Path, repeats: int) -> dict[str, Any]:
    """transformers loading the same folder in this process: tokenizer + weights, and one text through it.
    In a thread, as the worker loads and computes (torch's CPU threads are slower from the main thread on a
    busy machine)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    def once() -> tuple[float, float]:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
        loaded = time.perf_counter()
        with torch.inference_mode():
            model(**tokenizer([TEXT], return_tensors="pt"))
        return (loaded - started) * 1000, (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(max_workers=1) as pool:
        runs = [pool.submit(once).result() for _ in range(repeats)]
    load, serve = [r[0] for r in runs], [r[1] for r in runs]
    return {"load_ms_median": round(statistics.median(load), 1), "load_and_one_text_ms_median":
            round(statistics.median(serve), 1), "load_ms": [round(x, 1) for x in load]}


def measure(plan: Plan, models: Path, chat_models: Path, workdir: Path) -> dict[str, Any]:
    host = machine()
    raw = raw_load_ms(models / MODELS[1], plan.raw_loads)

    def cache_one(stack: Stack) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return switch_times(stack, plan), loads_per_run(stack, plan, 1)

    def cache_two(stack: Stack) -> list[dict[str, Any]]:
        with httpx.Client(base_url=stack.base_url, timeout=600) as client:
            for model in MODELS:  # both resident before counting
                request_ms(client, model)
        return loads_per_run(stack, plan, 2)

    switch, rows_one = with_stack(models, workdir, 1, cache_one, cpu_cache_gb="0")
    warm, rows_warm = with_stack(models, workdir, 1, cache_one)
    rows_two = with_stack(models, workdir, 2, cache_two)
    chat_modes = dict(list(CHAT_MODES.items())[:1]) if plan.interleaved < 100 else CHAT_MODES
    chat = chat_switches(chat_models, workdir, chat_modes)
    ratio = switch["switch_request_ms_median"] / raw["load_and_one_text_ms_median"]
    if switch["worker_logged_load_ms_median"] is not None:  # the eviction (gc.collect) and the first forward
        switch["switch_minus_load_minus_warm_ms"] = round(
            switch["switch_request_ms_median"] - switch["worker_logged_load_ms_median"]
            - switch["warm_request_ms_median"], 1)
    return {"benchmark": "switching", "plan": asdict(plan), "machine": host, "raw_transformers": raw,
            "switch": switch, "switch_over_raw_load_and_serve": round(ratio, 3),
            "switch_over_warm": round(switch["switch_request_ms_median"] / switch["warm_request_ms_median"], 1),
            "warm_switch": warm, "warm_switch_over_cold_switch": round(
                warm["switch_request_ms_median"] / switch["switch_request_ms_median"], 3),
            "interleaved": rows_one + rows_warm + rows_two, "vllm_chat": chat}


def print_table(result: dict[str, Any]) -> None:
    host, sw, raw = result["machine"], result["switch"], result["raw_transformers"]
    print(f"models: {result['plan']['base']}; {host['cores']} cores, load {host['load_avg_at_start']}")
    print(f"{'':<58}{'ms':>10}")
    print(f"{'raw transformers load (tokenizer + weights), median':<58}{raw['load_ms_median']:>10.1f}")
    print(f"{'raw load + one text, median':<58}{raw['load_and_one_text_ms_median']:>10.1f}")
    for name, ms in sw["first_request_ms"].items():
        print(f"{'first request, ' + name:<58}{ms:>10.1f}")
    print(f"{'switch request (evict + load + serve), median':<58}{sw['switch_request_ms_median']:>10.1f}")
    print(f"{'  of which the worker logged loading, median':<58}{sw['worker_logged_load_ms_median'] or 0:>10.1f}")
    print(f"{'warm request (model loaded), median':<58}{sw['warm_request_ms_median']:>10.2f}")
    if "switch_minus_load_minus_warm_ms" in sw:
        print(f"{'switch - load - warm (eviction, first forward)':<58}{sw['switch_minus_load_minus_warm_ms']:>10.1f}")
    print(f"cold switch / (raw load + one text): {result['switch_over_raw_load_and_serve']:.2f}x (goal <= 1.2); "
          f"switch / warm request: {result['switch_over_warm']:.0f}x")
    print(f"warm switch (parked model back), median {result['warm_switch']['switch_request_ms_median']:.1f} ms: "
          f"{result['warm_switch_over_cold_switch']:.2f}x the cold switch (goal <= 0.3)")
    print(f"{'cache size':>10} {'parking':>8} {'in flight':>9} {'loads/100 req':>13} {'req/s':>8}")
    for r in result["interleaved"]:
        print(f"{r['cache_size']:>10} {r['cpu_cache']!s:>8} {r['in_flight']:>9} {r['loads_per_100']:>13.1f}"
              f" {r['requests_per_s']:>8.1f}")
    print(f"{'vLLM chat, one slot':<40} {'1st load s':>10} {'2nd load s':>10} {'back s':>7} {'switch ms':>10}"
          f" {'max':>7}  requests ms")
    for r in result["vllm_chat"]:
        print(f"{r['mode']:<40} {r['first_load_s']:>10.2f} {r['second_load_s']:>10.2f} {r['switch_back_load_s']:>7.2f}"
              f" {r['switch_request_ms_median']:>10.0f} {r['switch_request_ms_max']:>7.0f}  {r['request_ms']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few requests")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/switching[-smoke].json)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="bench-switching-") as tmp:
        workdir = Path(tmp)
        chat_models = workdir / "chat-models"
        for name in CHAT_MODELS:
            make_chat_model(chat_models / name, "qwen3")
        result = measure(plan, build_models(workdir / "models", args.smoke), chat_models, workdir)
    result["smoke"] = args.smoke
    print_table(result)
    write_json(output_path("switching", args.smoke, args.out), result)


if __name__ == "__main__":
    main()
