"""Rerank throughput: pairs/s through the whole stack (HTTP -> API -> Redis -> worker) against
sentence-transformers' `CrossEncoder.predict` on the same model and the same pairs, in one run.

    python -m bench.rerank            # a MiniLM-L6-sized random cross-encoder, 1,024 pairs
    python -m bench.rerank --smoke    # the tiny test cross-encoder, a few pairs (seconds)

It starts its own redis-server, worker and API (as tests/stack.py does), prints a table with the
ratio and writes JSON to bench/results/rerank.json (rerank-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.util import machine, service_defaults
from tests.model_factory import make_bert_cross_encoder
from tests.stack import RedisServer, Stack

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench-cross-encoder"
WORD_TEXT = (
    "the a my our cat dog teacher farmer student pilot engineer bird children baker robot reads writes finds "
    "builds paints opens carries watches cooks sells buys cleans moves fixes draws book letter apple window box "
    "car map garden bread house river shirt computer question answer story music lamp bridge song kitchen school "
    "lake city hill market forest sea home library tree station morning yesterday monday night summer today week "
    "lunch dinner tomorrow winter weekend capital france paris berlin germany weather mountain ocean planet"
)
MINILM_L6 = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


@dataclass(frozen=True)
class Plan:
    requests: int
    docs_per_request: int
    concurrency: int
    repeats: int
    model_size: str


FULL = Plan(requests=32, docs_per_request=32, concurrency=8, repeats=3, model_size="MiniLM-L6 (384x6), random")
SMOKE = Plan(requests=4, docs_per_request=8, concurrency=2, repeats=1, model_size="tiny test model (64x2)")


def build_model(folder: Path, smoke: bool) -> Path:
    """The tiny test cross-encoder, or one of MiniLM-L6's size on the same tokenizer (random weights)."""
    make_bert_cross_encoder(folder)
    if not smoke:
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig.from_pretrained(folder)
        config.update(MINILM_L6)
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).eval()
        model.config.architectures = ["BertForSequenceClassification"]
        model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def make_requests(plan: Plan, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Queries with documents of 5 to 60 words: a retrieval-like mix of lengths."""
    rng = random.Random(seed)
    words = WORD_TEXT.split()
    out = []
    for _ in range(plan.requests):
        query = " ".join(rng.sample(words, rng.randint(3, 12))) + "?"
        docs = [" ".join(rng.choices(words, k=rng.randint(5, 60))) + "." for _ in range(plan.docs_per_request)]
        out.append((query, docs))
    return out


async def stack_run(base_url: str, requests: list[tuple[str, list[str]]], concurrency: int) -> float:
    """Seconds to rerank every request through the API, `concurrency` requests in flight."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(query: str, docs: list[str]) -> None:
            async with gate:
                response = await client.post("/v1/rerank", json={"model": MODEL, "query": query, "documents": docs,
                                                                 "return_documents": False})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(q, d) for q, d in requests))
        return time.perf_counter() - started


def cross_encoder_run(model: Any, requests: list[tuple[str, list[str]]]) -> float:
    """Seconds for CrossEncoder.predict on all the pairs at once (its default batch size, 32)."""
    pairs = [(q, d) for q, docs in requests for d in docs]
    started = time.perf_counter()
    model.predict(pairs, show_progress_bar=False)
    return time.perf_counter() - started


def measure(plan: Plan, folder: Path, workdir: Path) -> dict[str, Any]:
    """Both paths on the same pairs, alternating run by run (the machine's load drifts), medians."""
    from sentence_transformers import CrossEncoder

    requests = make_requests(plan)
    pairs = plan.requests * plan.docs_per_request
    cross_encoder = CrossEncoder(str(folder), device="cpu")
    redis = RedisServer(workdir / "redis")
    redis.start()
    stack = Stack(redis.url, folder.parent, workdir / "logs",
                  env_extra={**service_defaults(), "LLM_LOG_LEVEL": "WARNING"})
    stack_s: list[float] = []
    ce_s: list[float] = []
    try:
        stack.start(expect_models=1)
        asyncio.run(stack_run(stack.base_url, requests[:2], 2))  # warm-up; loads the model in the worker
        cross_encoder_run(cross_encoder, requests[:2])
        for _ in range(plan.repeats):
            ce_s.append(cross_encoder_run(cross_encoder, requests))
            stack_s.append(asyncio.run(stack_run(stack.base_url, requests, plan.concurrency)))
    finally:
        stack.stop()
        redis.stop()
    stack_rate = pairs / statistics.median(stack_s)
    ce_rate = pairs / statistics.median(ce_s)
    return {"plan": asdict(plan), "pairs": pairs, "machine": machine(),
            "stack_pairs_per_s": round(stack_rate, 1), "cross_encoder_pairs_per_s": round(ce_rate, 1),
            "ratio": round(stack_rate / ce_rate, 3), "stack_s": stack_s, "cross_encoder_s": ce_s}


def print_table(result: dict[str, Any]) -> None:
    plan = result["plan"]
    print(f"model: {plan['model_size']}; {result['pairs']} pairs ({plan['requests']} requests x "
          f"{plan['docs_per_request']} documents, {plan['concurrency']} in flight); "
          f"median of {plan['repeats']}; {result['machine']['cores']} cores")
    print(f"{'path':<36}{'pairs/s':>12}")
    print(f"{'stack (HTTP -> Redis -> worker)':<36}{result['stack_pairs_per_s']:>12.1f}")
    print(f"{'CrossEncoder.predict (in process)':<36}{result['cross_encoder_pairs_per_s']:>12.1f}")
    print(f"{'ratio stack / CrossEncoder':<36}{result['ratio']:>11.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few pairs")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/rerank[-smoke].json)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        workdir = Path(tmp)
        folder = build_model(workdir / "models" / MODEL, args.smoke)
        result = measure(plan, folder, workdir)
    print_table(result)
    out = args.out or RESULTS / ("rerank-smoke.json" if args.smoke else "rerank.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
