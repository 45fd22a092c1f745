"""The GPU benchmark's rerank, chat and switching sections (see bench/gpu.py): engines driven in-process."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from bench import gpu_models as gm  # first: it stands in for what is missing (see install_fallbacks)
from bench.gpu_timing import Plan, compare, drop_page_cache, random_ids, sync, timed
from common.discovery import ModelInfo
from worker.engines.base import Engine, pad_batch
from worker.engines.chat_base import GenerationParams
from worker.engines.embedding import EmbeddingEngine
from worker.engines.hf_chat import TransformersChatEngine
from worker.engines.rerank import RerankEngine
from worker.microbatch import plan_batches


def rerank_pairs(plan: Plan, engine: RerankEngine) -> list[tuple[list[int], int]]:
    """([CLS] query [SEP] document [SEP], type-0 length): queries of 8-32 tokens, documents up to the window."""
    rng = np.random.default_rng(1)
    tokenizer = engine.inputs.tokenizer
    cls, sep = int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
    vocab = plan.shapes["reranker"]["vocab_size"]
    low, high = plan.lengths
    pairs = []
    for _ in range(plan.pairs):
        query = random_ids(rng, 1000 % vocab, vocab, int(rng.integers(8, 33)))
        room = max(low + 1, min(high, 512) - 3 - len(query))
        doc = random_ids(rng, 1000 % vocab, vocab, int(rng.integers(low, room)))
        pairs.append(([cls, *query, sep, *doc, sep], len(query) + 2))
    return pairs


def rerank_section(plan: Plan, info: ModelInfo, settings: Any) -> dict[str, Any]:
    engine = RerankEngine(info, settings)
    load_s = timed(plan.device, engine.load)
    pairs = rerank_pairs(plan, engine)
    lengths = [len(ids) for ids, _ in pairs]
    sorted_b = [[pairs[i] for i in b] for b in plan_batches(lengths, plan.budget_tokens, plan.max_items)]
    naive_b = [pairs[i:i + plan.rerank_naive_batch] for i in range(0, len(pairs), plan.rerank_naive_batch)]
    result = compare(plan, engine.score, sorted_b, naive_b, sum(lengths))
    pad_ms = 1000 * timed("cpu", lambda: [pad_batch([s for s, _ in b], engine.inputs.pad_id, "cpu") for b in sorted_b])
    best_sorted = min(result["sorted_s"])
    result.update(load_s=round(load_s, 2), pairs=len(pairs), parameters=gm.parameters(engine.model),
                  sorted_pairs_per_s=round(len(pairs) / best_sorted),
                  naive_pairs_per_s=round(len(pairs) / min(result["naive_s"])),
                  host_pad_ms_per_sorted_pass=round(pad_ms),
                  host_pad_share_of_sorted_pass=round(pad_ms / 1000 / best_sorted, 3))
    engine.unload()
    return result


async def _engine_stream(engine: TransformersChatEngine, prompt: list[int], tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first, count = -1.0, 0
    async for delta in engine.generate("bench", prompt, GenerationParams(max_tokens=tokens, temperature=0.0)):
        if first < 0 and delta.tokens:
            first = time.perf_counter() - started
        count += delta.tokens
    return time.perf_counter() - started, first, count


def chat_section(plan: Plan, info: ModelInfo, settings: Any) -> dict[str, Any]:
    engine = TransformersChatEngine(info, settings)
    load_s = timed(plan.device, engine.load)
    prompt = random_ids(np.random.default_rng(2), 0, plan.shapes["chat"]["vocab_size"], plan.chat_prompt)
    ids = torch.tensor([prompt], device=engine.device)

    def generate(new: int) -> Any:
        with torch.inference_mode():
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                        do_sample=False)
            sync(plan.device)
            return out

    def raw(new: int) -> tuple[float, int]:
        """`generate` from a thread, as the engine runs it (torch's CPU threads behave differently there)."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            started = time.perf_counter()
            out = pool.submit(generate, new).result()
            return time.perf_counter() - started, int(out.shape[1]) - len(prompt)

    raw(4)  # warm-up, both ways
    asyncio.run(_engine_stream(engine, prompt, 4))
    raw_runs = [raw(plan.chat_tokens) for _ in range(plan.repeats)]
    raw_ttft = min(raw(1)[0] for _ in range(plan.repeats))
    eng_runs = [asyncio.run(_engine_stream(engine, prompt, plan.chat_tokens)) for _ in range(plan.repeats)]
    raw_rate = max(n / s for s, n in raw_runs)
    eng_rate = max(n / s for s, _, n in eng_runs)
    eng_ttft = min(f for _, f, _ in eng_runs)
    engine.unload()
    return {"load_s": round(load_s, 2), "prompt_tokens": plan.chat_prompt, "max_tokens": plan.chat_tokens,
            "engine_tokens_per_s": round(eng_rate, 1), "raw_generate_tokens_per_s": round(raw_rate, 1),
            "throughput_ratio": round(eng_rate / raw_rate, 3), "engine_ttft_ms": round(1000 * eng_ttft, 1),
            "raw_ttft_ms": round(1000 * raw_ttft, 1), "added_ttft_ms": round(1000 * (eng_ttft - raw_ttft), 1),
            "tokens": [n for _, _, n in eng_runs]}


def pin(module: torch.nn.Module) -> None:
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.data = tensor.data.pin_memory()


def switch_one(plan: Plan, make: Callable[[], Engine], probe: Callable[[Engine], Any]) -> dict[str, Any]:
    """Cold load vs restoring a parked CPU copy (pageable, then pinned) vs a reload from the page cache."""
    dropped = plan.drop_caches and drop_page_cache()
    engine = make()
    held: Any = engine  # every engine keeps its weights in `.model`
    cold_s = timed(plan.device, engine.load)
    first_ms = 1000 * timed(plan.device, lambda: probe(engine))
    warm_ms = 1000 * timed(plan.device, lambda: probe(engine))
    park_s = timed(plan.device, lambda: held.model.to("cpu"))
    restore_s = timed(plan.device, lambda: held.model.to(plan.device))
    after_restore_ms = 1000 * timed(plan.device, lambda: probe(engine))
    pinned = plan.device.startswith("cuda")
    held.model.to("cpu")
    pin_s = timed(plan.device, lambda: pin(held.model)) if pinned else 0.0
    restore_pinned_s = timed(plan.device, lambda: held.model.to(plan.device, non_blocking=pinned))
    engine_park_s = timed(plan.device, engine.park)  # the worker's path: one pinned buffer, GPU freed
    engine_wake_s = timed(plan.device, engine.wake)
    engine.unload()
    reload_s = timed(plan.device, engine.load)
    engine.unload()
    return {"page_cache_dropped": dropped, "cold_load_s": round(cold_s, 3), "reload_page_cache_warm_s":
            round(reload_s, 3), "park_to_cpu_s": round(park_s, 3), "restore_pageable_s": round(restore_s, 3),
            "pin_s": round(pin_s, 3), "restore_pinned_s": round(restore_pinned_s, 3),
            "cold_over_restore_pinned": round(cold_s / max(restore_pinned_s, 1e-6), 1),
            "engine_park_s": round(engine_park_s, 3), "engine_wake_s": round(engine_wake_s, 3),
            "engine_wake_over_cold_load": round(engine_wake_s / max(cold_s, 1e-6), 3),
            "first_request_ms": round(first_ms, 1), "warm_request_ms": round(warm_ms, 1),
            "request_after_restore_ms": round(after_restore_ms, 1)}


def switching_section(plan: Plan, infos: dict[str, ModelInfo], settings: Any) -> dict[str, Any]:
    short = [[5] * 16, [6] * 32]

    def chat_probe(engine: Engine) -> Any:
        assert isinstance(engine, TransformersChatEngine)
        return asyncio.run(_engine_stream(engine, [5] * 16, 1))

    makers: dict[str, tuple[Callable[[], Engine], Callable[[Engine], Any]]] = {
        "embedding": (lambda: EmbeddingEngine(infos["embedding"], settings),
                      lambda e: e.embed(short)),  # type: ignore[attr-defined]
        "reranker": (lambda: RerankEngine(infos["reranker"], settings),
                     lambda e: e.score([([101, 5, 102, 6, 102], 3)])),  # type: ignore[attr-defined]
        "chat": (lambda: TransformersChatEngine(infos["chat"], settings), chat_probe),
    }
    return {name: switch_one(plan, make, probe) for name, (make, probe) in makers.items()}
