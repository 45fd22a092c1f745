"""The GPU benchmark's padding-free section (see bench/gpu.py): packed against padded batches, in eager mode,
for a decoder embedder (Qwen3-0.6B shape), an encoder embedder and a cross-encoder (BERT-base shape), on
the same texts, with and without the fused RMSNorm (worker/engines/norms.py) and the fast rotary embedding
(worker/engines/rotary.py); how far each variant's vectors (or scores) are from the eager padded path's;
where the GPU's time goes in the packed variant (kernels by kind); compiled layers, when time allows.

Every variant runs on one loaded engine (its `packed` flag, norms and rotary switched between runs), each on
the batches the worker would cut for it: by padded size for padded batches, by real tokens for packed ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.gpu_timing import Plan, passes, sync
from common.discovery import ModelInfo
from worker.engines import norms, rotary
from worker.engines.base import compile_layers
from worker.engines.embedding import EmbeddingEngine, shape_vector
from worker.engines.rerank import RerankEngine
from worker.microbatch import plan_batches

GOAL_PACKED_TOKENS_PER_S = 450_000  # issue 20: eager, Qwen3-0.6B shape
COMPILED_MIN_LEFT_S = 260  # compiling and timing both variants took about 200 s on an H200
# (name, packed, fused norms, fast rotary); the first is the reference of the others' vectors.
EAGER_VARIANTS = (("padded", False, False, False), ("padded_fused_norms", False, True, False),
                  ("padded_fused", False, True, True), ("packed_fused", True, True, True))
ENCODER_VARIANTS = (("padded", False, False, False), ("packed", True, False, False))
KINDS = (("gemm", ("gemm", "xmma", "cutlass", "nvjet", "cublas")), ("attention", ("flash", "fmha", "attention")),
         ("norm", ("rms", "norm")), ("copy", ("copy", "cat", "transpose")),
         ("elementwise", ("elementwise", "vectorized", "unrolled")), ("reduce", ("reduce",)))


def _set(engine: Any, packed: bool, fused_norms: bool, fast_rotary: bool) -> None:
    engine.packed = packed
    norms.unfuse(engine.fused_norms)
    engine.fused_norms = norms.fuse(engine.model) if fused_norms else []
    rotary.unfuse()
    if fast_rotary:
        rotary.fuse(engine.model)


def _batches(lengths: list[int], plan: Plan, packed: bool) -> list[list[int]]:
    return plan_batches(lengths, plan.budget_tokens, plan.max_items, packed=packed)


def _outputs(compute: Callable[[list[Any]], np.ndarray], items: list[Any], batches: list[list[int]]) -> np.ndarray:
    rows: list[np.ndarray | None] = [None] * len(items)
    for batch in batches:
        for i, row in zip(batch, compute([items[i] for i in batch]), strict=True):
            rows[i] = row
    return np.stack(rows)  # type: ignore[arg-type]


def _cosine_gap(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)
    return float((1 - cos).max())


def _rate(plan: Plan, work: Callable[[Any], Any], batches: list[Any], tokens: int) -> dict[str, Any]:
    first_s, runs = passes(plan, work, batches)
    return {"tokens_per_s": round(tokens / min(runs)), "first_pass_s": round(first_s, 3),
            "runs_s": [round(x, 3) for x in runs], "batches": len(batches)}


def variants(plan: Plan, engine: Any, items: list[Any], lengths: list[int], compute: Callable[[list[Any]], np.ndarray],
             chosen: tuple[tuple[str, bool, bool, bool], ...], reference: np.ndarray | None = None,
             ) -> tuple[dict[str, Any], np.ndarray | None]:
    """Each variant's rate (EAGER_VARIANTS) and its outputs' distance from `reference` (by default the first
    variant's outputs); the reference, for later runs to compare with."""
    tokens, result = sum(lengths), {}
    for name, packed, fused_norms, fast_rotary in chosen:
        try:
            _set(engine, packed, fused_norms, fast_rotary)
            index = _batches(lengths, plan, packed)
            batches = [[items[i] for i in b] for b in index]
            row = _rate(plan, compute, batches, tokens)
            out = _outputs(compute, items, index)
            reference = out if reference is None else reference
            row["max_cosine_gap_vs_padded"] = _cosine_gap(out, reference)
            row["max_abs_diff_vs_padded"] = float(np.abs(out - reference).max())
        except Exception as exc:  # a failing variant is a result, not the end of the run
            row = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        result[name] = row
        print(f"  {name}: {row.get('tokens_per_s', row.get('error'))}", flush=True)
    return result, reference


def kernel_time(plan: Plan, work: Callable[[Any], Any], batches: list[Any]) -> dict[str, Any]:
    """GPU time by kernel kind, and the top kernels, over `batches` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            work(batch)
        sync(plan.device)
    rows = []
    for event in prof.key_averages():
        us = float(getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0) or 0)
        if us > 0:
            rows.append((event.key, us, int(event.count)))
    total = sum(us for _, us, _ in rows) or 1.0
    kinds: dict[str, float] = {}
    for key, us, _ in rows:
        kind = next((k for k, marks in KINDS if any(m in key.lower() for m in marks)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + us
    top = sorted(rows, key=lambda r: -r[1])[:14]
    return {"gpu_ms": round(total / 1000, 1), "share_by_kind": {k: round(v / total, 3) for k, v in
                                                               sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": k[:100], "ms": round(us / 1000, 2), "calls": n} for k, us, n in top]}


def embedder(plan: Plan, info: ModelInfo, settings: Any, seqs: list[list[int]], decoder: bool,
             left_s: Callable[[], float]) -> dict[str, Any]:
    engine = EmbeddingEngine(info, settings)
    engine.load()
    lengths = [len(s) for s in seqs]
    result: dict[str, Any] = {"packed_at_load": engine.packed, "fused_norms_at_load": len(engine.fused_norms),
                              "tokens": sum(lengths), "texts": len(seqs)}

    def work(batch: list[list[int]]) -> np.ndarray:  # what EmbeddingHandler.compute does with a batch
        vectors = engine.embed(batch)
        [shape_vector(v, None) for v in vectors]
        return vectors

    chosen = EAGER_VARIANTS if decoder else ENCODER_VARIANTS
    result["eager"], padded = variants(plan, engine, seqs, lengths, work, chosen)
    if plan.device.startswith("cuda"):
        best = max((v for v in result["eager"].values() if "tokens_per_s" in v), key=lambda v: v["tokens_per_s"],
                   default=None)
        result["goal_tokens_per_s"] = GOAL_PACKED_TOKENS_PER_S if decoder else None
        result["goal_met"] = bool(decoder and best and best["tokens_per_s"] >= GOAL_PACKED_TOKENS_PER_S)
        _set(engine, True, decoder, decoder)
        index = _batches(lengths, plan, True)
        result["kernels_packed"] = kernel_time(plan, work, [[seqs[i] for i in b] for b in index[-3:]])
        if decoder and plan.compile and left_s() > COMPILED_MIN_LEFT_S:
            result["compiled"] = compiled(plan, engine, seqs, lengths, work, padded)
    engine.unload()
    return result


def compiled(plan: Plan, engine: Any, seqs: list[list[int]], lengths: list[int], work: Callable[[Any], np.ndarray],
             padded: np.ndarray | None) -> dict[str, Any]:
    """Compiled layers (LLM_EMBEDDING_COMPILE), padded then packed, both with the fused norms and rotary; their
    vectors against the eager padded ones (`padded`)."""
    try:
        started = time.perf_counter()
        if not compile_layers(engine.model):
            return {"skipped": "no .layers"}
        row, _ = variants(plan, engine, seqs, lengths, work, EAGER_VARIANTS[2:], padded)
        row["elapsed_s"] = round(time.perf_counter() - started, 1)
        return row
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:1500]}


def cross_encoder(plan: Plan, info: ModelInfo, settings: Any,
                  make_pairs: Callable[[RerankEngine], list[tuple[list[int], int]]]) -> dict[str, Any]:
    engine = RerankEngine(info, settings)
    engine.load()
    pairs = make_pairs(engine)
    lengths = [len(ids) for ids, _ in pairs]
    result: dict[str, Any] = {"packed_at_load": engine.packed, "pairs": len(pairs), "tokens": sum(lengths)}
    result["eager"], _ = variants(plan, engine, pairs, lengths, engine.score, ENCODER_VARIANTS)
    for row in result["eager"].values():
        if "tokens_per_s" in row:
            row["pairs_per_s"] = round(row["tokens_per_s"] * len(pairs) / sum(lengths))
    engine.unload()
    return result


def packed_section(plan: Plan, infos: dict[str, ModelInfo], settings: Any, seqs: list[list[int]],
                   pairs: Callable[[RerankEngine], list[tuple[list[int], int]]], left_s: Callable[[], float],
                   save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Settings with `packed_batches=True`, so that each engine checks and switches on its packed path. `save`
    gets what is measured so far after each model (a run stopped at its time limit keeps it)."""
    result: dict[str, Any] = {"decoder_embedder": embedder(plan, infos["embedding"], settings, seqs, True, left_s)}
    save(result)
    if plan.device.startswith("cuda"):
        torch.cuda.empty_cache()
    encoder_seqs = [[t % plan.shapes["encoder"]["vocab_size"] for t in s][:512] for s in seqs]
    result["encoder_embedder"] = embedder(plan, infos["encoder"], settings, encoder_seqs, False, left_s)
    save(result)
    result["cross_encoder"] = cross_encoder(plan, infos["reranker"], settings, pairs)
    return result
