"""Tool calling's cost: the same chat requests without tools, with tools the model may call (`auto`: the tools in
the prompt, the call grammar only once it opens a call) and with a forced call (`required`: every token under
the grammar), on vLLM through the whole stack. Rounds alternate the three, so each is measured beside the others.

    python -m bench tools           # the trained tool model (tests/trained_models.py), 64 requests x 3 rounds
    python -m bench tools --smoke   # random weights, 8 requests, 1 round

Per mode: request latency (p50/p95), completion tokens, milliseconds per completion token, completion tokens
per second at the given concurrency. Writes bench/results/tools.json (tools-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.util import distribution, machine, output_path, write_json
from tests.stack import RedisServer, Stack
from tests.trained_models import make_tool_model

MODEL = "tools-model"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
MODES: dict[str, dict[str, Any]] = {"no tools": {}, "auto": {"tools": [WEATHER]},
                                    "required": {"tools": [WEATHER], "tool_choice": "required"}}


def one(base_url: str, i: int, extra: dict[str, Any]) -> tuple[float, int, bool]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"What is the weather in city {i % 7}?"}],
            "temperature": 0, "max_tokens": 64, **extra}
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    data = response.json()
    return elapsed, int(data["usage"]["completion_tokens"]), bool(data["choices"][0]["message"].get("tool_calls"))


def run_mode(base_url: str, extra: dict[str, Any], requests: int, concurrency: int) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one(base_url, i, extra), range(requests)))
    wall = time.perf_counter() - started
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"latency_ms": distribution(latencies), "completion_tokens": tokens, "wall_s": round(wall, 3),
            "ms_per_token": round(sum(latencies) / max(tokens, 1), 3),
            "tokens_per_s": round(tokens / wall, 1), "with_calls": sum(r[2] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    requests, rounds, concurrency = (8, 1, 4) if args.smoke else (64, 3, 8)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        root = Path(tmp)
        make_tool_model(root / "models" / MODEL, steps=0 if args.smoke else 600)
        redis = RedisServer(root / "redis")
        redis.start()
        stack = Stack(redis.url, root / "models", root / "logs")
        try:
            stack.start(expect_models=1)
            one(stack.base_url, 0, MODES["required"])  # load the model and compile the grammar once
            for _ in range(rounds):
                for mode, extra in MODES.items():
                    runs[mode].append(run_mode(stack.base_url, extra, requests, concurrency))
                    r = runs[mode][-1]
                    print(f"{mode:>9}: p50 {r['latency_ms']['p50']:8.1f} ms, {r['completion_tokens']:5} tokens, "
                          f"{r['ms_per_token']:6.2f} ms/token, {r['tokens_per_s']:7.1f} tokens/s, "
                          f"{r['with_calls']} with calls", flush=True)
        finally:
            stack.stop()
            redis.stop()
    write_json(output_path("tools", args.smoke, args.out), {
        "model": "tiny-qwen25-tools (random weights)" if args.smoke else "tiny-qwen25-tools (trained)",
        "engine": "vllm", "requests": requests, "rounds": rounds, "concurrency": concurrency,
        "machine": machine(), "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
