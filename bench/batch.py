"""Batch API throughput and its effect on interactive latency, through the whole stack in one run:

1. the same embedding inputs as interactive requests (one input each, `concurrency` in flight) and as one
   batch (one line each): inputs/s of both and their ratio (goal >= 1.0);
2. p50/p95 latency of one-input interactive requests sent one at a time, with no batch running and while
   a large batch runs.

    python -m bench.batch            # all-MiniLM-L6-v2, 2,000 inputs
    python -m bench.batch --smoke    # the tiny test embedding model, a few hundred inputs (seconds)

It starts its own redis-server, worker and API (as tests/stack.py does), prints a table and writes JSON to
bench/results/batch.json (batch-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.util import machine
from tests.model_factory import _WORDS, copy_minilm, make_qwen3_embedding
from tests.stack import RedisServer, Stack

RESULTS = Path(__file__).resolve().parent / "results"
FINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass(frozen=True)
class Plan:
    model: str
    inputs: int
    concurrency: int
    latency_requests: int
    background_lines: int  # the batch running while latency is probed (cancelled after)
    repeats: int


FULL = Plan(model="all-minilm-l6-v2", inputs=2000, concurrency=64, latency_requests=40, background_lines=10_000,
            repeats=1)
SMOKE = Plan(model="tiny-qwen3-embedding", inputs=300, concurrency=16, latency_requests=10, background_lines=10_000,
             repeats=1)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of 5 to 60 words: a retrieval-corpus mix of lengths."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=rng.randint(5, 60))) + "." for _ in range(n)]


async def interactive(base_url: str, model: str, texts: list[str], concurrency: int) -> float:
    """Seconds to embed every text as its own request, `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def one(text: str) -> None:
            async with gate:
                response = await client.post("/v1/embeddings", json={"model": model, "input": text,
                                                                     "encoding_format": "base64"})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        return time.perf_counter() - started


def submit(client: OpenAI, model: str, texts: list[str], folder: Path, tag: str) -> str:
    path = folder / f"{tag}.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/embeddings",
                                        "body": {"model": model, "input": t, "encoding_format": "base64"}}) + "\n"
                            for i, t in enumerate(texts)))
    with path.open("rb") as fh:
        file_id = client.files.create(file=fh, purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h").id


def batch_run(client: OpenAI, model: str, texts: list[str], folder: Path, tag: str) -> float:
    """Seconds from creating the batch (file uploaded) to `completed`."""
    started = time.perf_counter()
    batch_id = submit(client, model, texts, folder, tag)
    while (batch := client.batches.retrieve(batch_id)).status not in FINAL:
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == len(texts), batch
    return elapsed


def latencies(base_url: str, model: str, texts: list[str]) -> list[float]:
    """Milliseconds of one-input requests sent one at a time."""
    out = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for text in texts:
            started = time.perf_counter()
            client.post("/v1/embeddings", json={"model": model, "input": text}).raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    return out


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def latency_under_batch(client: OpenAI, base_url: str, plan: Plan, folder: Path) -> tuple[list[float], int]:
    """Latencies while a large batch runs (cancelled afterwards); how many of its lines finished meanwhile."""
    batch_id = submit(client, plan.model, make_texts(plan.background_lines, seed=7), folder, "background")
    while (batch := client.batches.retrieve(batch_id)).status != "in_progress" or not batch.request_counts \
            or batch.request_counts.completed == 0:
        time.sleep(0.05)
    before = batch.request_counts.completed
    probe = latencies(base_url, plan.model, make_texts(plan.latency_requests, seed=3))
    batch = client.batches.retrieve(batch_id)
    if batch.status not in FINAL:
        client.batches.cancel(batch_id)
    while client.batches.retrieve(batch_id).status not in FINAL:
        time.sleep(0.1)
    if batch.status != "in_progress":
        note("the background batch ended during the probe: make it larger")
    return probe, (batch.request_counts.completed if batch.request_counts else 0) - before


def measure(plan: Plan, models: Path, workdir: Path) -> dict[str, Any]:
    texts = make_texts(plan.inputs)
    host = machine()
    redis = RedisServer(workdir / "redis")
    redis.start("--appendonly", "yes", "--appendfsync", "everysec")
    stack = Stack(redis.url, models, workdir / "logs", env_extra={"LLM_LOG_LEVEL": "WARNING"})
    try:
        stack.start(expect_models=1)
        client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)
        asyncio.run(interactive(stack.base_url, plan.model, texts[:32], 8))  # loads the model
        idle = latencies(stack.base_url, plan.model, make_texts(plan.latency_requests, seed=3))
        note(f"idle latency p50 {pct(idle, 0.5)} ms")
        inter_s, batch_s = [], []
        for r in range(plan.repeats):
            inter_s.append(asyncio.run(interactive(stack.base_url, plan.model, texts, plan.concurrency)))
            note(f"interactive: {inter_s[-1]:.1f} s")
            batch_s.append(batch_run(client, plan.model, texts, workdir, f"run{r}"))
            note(f"batch: {batch_s[-1]:.1f} s")
        busy, progressed = latency_under_batch(client, stack.base_url, plan, workdir)
    finally:
        stack.stop()
        redis.stop()
    inter_rate = plan.inputs / statistics.median(inter_s)
    batch_rate = plan.inputs / statistics.median(batch_s)
    return {"plan": asdict(plan), "machine": host,
            "interactive_inputs_per_s": round(inter_rate, 1), "batch_inputs_per_s": round(batch_rate, 1),
            "ratio_batch_over_interactive": round(batch_rate / inter_rate, 3),
            "interactive_s": [round(x, 2) for x in inter_s], "batch_s": [round(x, 2) for x in batch_s],
            "latency_idle_ms": {"p50": pct(idle, 0.5), "p95": pct(idle, 0.95)},
            "latency_during_batch_ms": {"p50": pct(busy, 0.5), "p95": pct(busy, 0.95)},
            "batch_lines_done_during_probe": progressed}


def print_table(result: dict[str, Any]) -> None:
    plan = result["plan"]
    print(f"model: {plan['model']}; {plan['inputs']} inputs; interactive: one input per request, "
          f"{plan['concurrency']} in flight; median of {plan['repeats']}; {result['machine']['cores']} cores, "
          f"load {result['machine']['load_avg_at_start']}")
    print(f"{'path':<44}{'inputs/s':>12}")
    print(f"{'interactive requests (full concurrency)':<44}{result['interactive_inputs_per_s']:>12.1f}")
    print(f"{'one batch (create -> completed)':<44}{result['batch_inputs_per_s']:>12.1f}")
    print(f"{'ratio batch / interactive':<44}{result['ratio_batch_over_interactive']:>11.2f}x")
    idle, busy = result["latency_idle_ms"], result["latency_during_batch_ms"]
    print(f"interactive latency, one request at a time: p50 {idle['p50']} ms idle, {busy['p50']} ms during a "
          f"batch (p95 {idle['p95']} / {busy['p95']} ms); the batch finished "
          f"{result['batch_lines_done_during_probe']} lines meanwhile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few hundred inputs")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/batch[-smoke].json)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack we started on the way out
    plan = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        workdir = Path(tmp)
        folder = workdir / "models" / plan.model
        (make_qwen3_embedding if args.smoke else copy_minilm)(folder)
        result = measure(plan, folder.parent, workdir)
    print_table(result)
    out = args.out or RESULTS / ("batch-smoke.json" if args.smoke else "batch.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
