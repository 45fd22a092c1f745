"""The GPU benchmark's plan (full and smoke) and its timing helpers (see bench/gpu.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import gpu_models as gm

GOAL_TOKENS_PER_S = 250_000
COMPILE_MIN_LEFT_S = 200  # start the compiled run only with this much of the budget left


@dataclass(frozen=True)
class Plan:
    device: str
    dtype: str
    shapes: dict[str, dict[str, Any]]
    texts: int = 4096
    lengths: tuple[int, int] = (16, 512)
    budget_tokens: int = 65536
    max_items: int = 4096
    naive_batch: int = 128
    pairs: int = 8192
    rerank_naive_batch: int = 32
    chat_prompt: int = 128
    chat_tokens: int = 128
    repeats: int = 2
    compile: bool = True
    drop_caches: bool = True
    budget_s: float = 420.0
    extra: dict[str, Any] = field(default_factory=dict)


FULL = Plan(device="cuda", dtype="bfloat16", shapes={"embedding": gm.EMBEDDING_SHAPE, "chat": gm.CHAT_SHAPE,
                                                     "reranker": gm.RERANK_SHAPE, "encoder": gm.RERANK_SHAPE})
SMOKE = Plan(device="cpu", dtype="float32", shapes={"embedding": gm.TINY_DECODER, "chat": gm.TINY_DECODER,
                                                    "reranker": gm.TINY_RERANK, "encoder": gm.TINY_RERANK},
             texts=64, lengths=(16, 64), budget_tokens=1024, max_items=256, naive_batch=16, pairs=64,
             rerank_naive_batch=8, chat_prompt=16, chat_tokens=8, repeats=1, compile=False, drop_caches=False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, work: Callable[[], Any]) -> float:
    sync(device)
    started = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - started


def drop_page_cache() -> bool:
    """Make the next load read from disk (root only); False where not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def random_ids(rng: np.random.Generator, low: int, high: int, count: int) -> list[int]:
    return [int(x) for x in rng.integers(low, high, size=count)]


def run_batches(device: str, work: Callable[[Any], Any], batches: list[Any]) -> float:
    return timed(device, lambda: [work(b) for b in batches])


def passes(plan: Plan, work: Callable[[Any], Any], batches: list[Any]) -> tuple[float, list[float]]:
    """Seconds of a first pass over the batches (warm-up, and compilation when compiled), then of each of
    `plan.repeats` timed passes (a rate is taken from the fastest)."""
    first_s = run_batches(plan.device, work, batches)
    return first_s, [run_batches(plan.device, work, batches) for _ in range(plan.repeats)]


def padded(batches: list[list[list[int]]]) -> int:
    return sum(len(b) * max(len(s) for s in b) for b in batches)


def compare(plan: Plan, work: Callable[[Any], Any], sorted_b: list[Any], naive_b: list[Any],
            tokens: int) -> dict[str, Any]:
    """Best of `repeats` of each (alternating), after a warm-up of the largest shapes of both."""
    run_batches(plan.device, work, sorted_b[-2:] + naive_b[:2])
    naive_s, sorted_s = [], []
    for _ in range(plan.repeats):
        naive_s.append(run_batches(plan.device, work, naive_b))
        sorted_s.append(run_batches(plan.device, work, sorted_b))
    best_sorted, best_naive = min(sorted_s), min(naive_s)
    return {"tokens": tokens, "sorted_batches": len(sorted_b), "naive_batches": len(naive_b),
            "sorted_tokens_per_s": round(tokens / best_sorted), "naive_tokens_per_s": round(tokens / best_naive),
            "speedup_sorted_over_naive": round(best_naive / best_sorted, 3),
            "sorted_s": [round(x, 3) for x in sorted_s], "naive_s": [round(x, 3) for x in naive_s]}
