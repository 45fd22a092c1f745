"""GPU benchmark: the project's worker engines driven in-process on one CUDA device (no Redis, no network).

Self-contained: it needs only torch and transformers (plus this repository on PYTHONPATH; stand-ins are
used for pydantic-settings and msgpack when they are missing). It builds random-weight models of real
shapes on the spot (bench/gpu_models.py) and measures, each against a baseline in the same run:
- embeddings (Qwen3-0.6B shape, bf16): `EmbeddingEngine.embed` over 4,096 texts of 16-512 tokens in
  length-sorted batches of at most 65,536 padded tokens (`worker.microbatch.plan_batches`, as the worker cuts
  them) vs unsorted fixed batches of 128 (goal >= 250k tokens/s on an H100; reference 141k); then the same
  with the decoder layers compiled (`torch.compile`, per layer), when time allows;
- rerank (BERT-base-shaped cross-encoder): `RerankEngine.score` on 8,192 pairs, sorted token-budget
  batches vs unsorted batches of 32 (CrossEncoder's batch size); the host-side padding time is given too;
- chat (Qwen2.5-0.5B shape, transformers engine: vLLM is not assumed): one stream of 128 tokens through
  `TransformersChatEngine.generate` vs `model.generate` on the same weights (tokens/s ratio, TTFT);
- switching: each model's cold load (`engine.load()`, page cache dropped when permitted) vs restoring a
  parked CPU copy with `.to('cuda')` (pageable and pinned), and a reload with a warm page cache;
- first, padding-free batches (bench/gpu_packed.py): packed against padded eager batches, with and without
  the fused RMSNorm and the fast rotary embedding, for a decoder embedder, an encoder embedder and a
  cross-encoder; where the GPU's time goes; compiled layers when the budget allows (`--only-packed`: that
  section alone, about 5 minutes).

    PYTHONPATH=. python3 -m bench.gpu          # one CUDA device; about 5-7 minutes on an H200
    python -m bench gpu --smoke                # tiny shapes on the CPU (seconds; CI checks it runs)

Writes JSON to bench/results/gpu.json (gpu-smoke.json with --smoke) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also as `python bench/gpu.py`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from bench import gpu_models as gm  # first: it stands in for what is missing (see install_fallbacks)
from bench.gpu_packed import EAGER_VARIANTS, ENCODER_VARIANTS, packed_section
from bench.gpu_scheduler import scheduler_section
from bench.gpu_sections import chat_section, rerank_pairs, rerank_section, switching_section
from bench.gpu_timing import (
    COMPILE_MIN_LEFT_S,
    FULL,
    GOAL_TOKENS_PER_S,
    SMOKE,
    Plan,
    compare,
    padded,
    passes,
    random_ids,
    timed,
)
from bench.util import machine, output_path, write_json
from common.discovery import ModelInfo, scan_models
from worker.engines.base import compile_layers, pad_batch
from worker.engines.embedding import EmbeddingEngine, shape_vector
from worker.microbatch import plan_batches


def embedding_texts(plan: Plan) -> list[list[int]]:
    rng = np.random.default_rng(0)
    low, high = plan.lengths
    vocab = plan.shapes["embedding"]["vocab_size"]
    return [random_ids(rng, 0, vocab, int(n)) for n in rng.integers(low, high + 1, size=plan.texts)]


class CausalNoMask(torch.nn.Module):
    """A causal decoder called without its padding mask. With right padding a real token only attends to
    earlier (real) tokens, so its hidden state is the same; padded positions change, but pooling masks
    them. Without a mask SDPA can take its causal flash kernel. Not what the engine does (a folder's decoder
    may attend both ways): measured here to show what it would be worth."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self.inner(input_ids=input_ids, **kwargs)


def sorted_rate(plan: Plan, work: Callable[[Any], Any], batches: list[Any], tokens: int) -> dict[str, Any]:
    first_s, runs = passes(plan, work, batches)
    rate = tokens / min(runs)
    return {"sorted_tokens_per_s": round(rate), "goal_met": rate >= GOAL_TOKENS_PER_S,
            "first_pass_s": round(first_s, 2), "sorted_s": [round(x, 3) for x in runs]}


def without_mask(plan: Plan, engine: EmbeddingEngine, work: Callable[[Any], Any], batches: list[Any],
                 tokens: int) -> dict[str, Any]:
    """The sorted run with the padding mask left out (see CausalNoMask), and how far its vectors move."""
    inner = engine.model
    probe = max(batches, key=padded_one)
    masked = engine.embed(probe)
    engine.model = CausalNoMask(inner)
    try:
        result = {"max_abs_diff_vs_masked": float(np.abs(engine.embed(probe) - masked).max()),
                  **sorted_rate(plan, work, batches, tokens)}
    finally:
        engine.model = inner
    return result


def padded_one(batch: list[list[int]]) -> int:
    return len(batch) * max(len(s) for s in batch) - sum(len(s) for s in batch)


def embedding_section(plan: Plan, info: ModelInfo, settings: Any) -> tuple[dict[str, Any], Callable[[str | None], Any]]:
    """The engine's sorted batches vs naive ones, host padding cost, then (returned for later, when time
    allows) the variants: no padding mask, compiled layers."""
    engine = EmbeddingEngine(info, settings)
    load_s = timed(plan.device, engine.load)
    seqs = embedding_texts(plan)
    lengths = [len(s) for s in seqs]
    tokens = sum(lengths)
    sorted_b = [[seqs[i] for i in b] for b in plan_batches(lengths, plan.budget_tokens, plan.max_items)]
    naive_b = [seqs[i:i + plan.naive_batch] for i in range(0, len(seqs), plan.naive_batch)]

    def work(batch: list[list[int]]) -> None:  # what EmbeddingHandler.compute does with a batch
        [shape_vector(v, None) for v in engine.embed(batch)]

    result = compare(plan, work, sorted_b, naive_b, tokens)
    pad_id = engine.inputs.pad_id
    result.update(
        load_s=round(load_s, 2), parameters=gm.parameters(engine.model), budget_tokens=plan.budget_tokens,
        padding_efficiency_sorted=round(tokens / padded(sorted_b), 3),
        padding_efficiency_naive=round(tokens / padded(naive_b), 3),
        host_pad_ms_per_pass=round(1000 * timed("cpu", lambda: [pad_batch(b, pad_id, "cpu") for b in sorted_b])),
        goal_tokens_per_s=GOAL_TOKENS_PER_S, goal_met=result["sorted_tokens_per_s"] >= GOAL_TOKENS_PER_S)
    result["no_padding_mask"] = without_mask(plan, engine, work, sorted_b, tokens)
    if plan.device.startswith("cuda"):
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    def later(skip: str | None) -> dict[str, Any]:
        try:
            return {"skipped": skip} if skip else compiled_rate(plan, engine, work, sorted_b, tokens)
        finally:
            engine.unload()

    return result, later


def compiled_rate(plan: Plan, engine: EmbeddingEngine, work: Callable[[Any], Any], batches: list[Any],
                  tokens: int) -> dict[str, Any]:
    """The sorted batches with every decoder layer compiled, as the engine does with
    LLM_EMBEDDING_COMPILE=true (`worker.engines.base.compile_layers`)."""
    try:
        if not compile_layers(engine.model):
            return {"skipped": "the model has no .layers"}
        result = sorted_rate(plan, work, batches, tokens)
        result["no_padding_mask"] = without_mask(plan, engine, work, batches, tokens)
    except Exception as exc:  # a compiler failure is a result, not a crash of the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return result


def describe(plan: Plan) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {**machine(), "python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "cpu_cores": os.cpu_count(),
                            "stand_ins": gm.SHIMMED}
    if plan.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build(plan: Plan, root: Path) -> dict[str, ModelInfo]:
    dtype = getattr(torch, plan.dtype)
    gm.build_embedding(root / "embedding", plan.shapes["embedding"], plan.device, dtype)
    gm.build_reranker(root / "reranker", plan.shapes["reranker"], plan.device, dtype)
    gm.build_encoder_embedding(root / "encoder", plan.shapes["encoder"], plan.device, dtype)
    gm.build_chat(root / "chat", plan.shapes["chat"], plan.device, dtype)
    return scan_models(root).models


def measure(plan: Plan, root: Path, out: Path, only_packed: bool = False) -> dict[str, Any]:
    """Every section in turn; the JSON is rewritten after each (`complete` false until the end), so a run
    stopped early still leaves what it measured. The compiled run goes last, and only with time left."""
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "gpu", "plan": asdict(plan), "machine": describe(plan),
                              "smoke": plan.device == "cpu", "complete": False, "elapsed_s": {}}

    def record(name: str, value: Any) -> None:
        result[name] = value
        result["elapsed_s"][name] = round(time.perf_counter() - started - sum(result["elapsed_s"].values()), 1)
        result["total_s"] = round(time.perf_counter() - started, 1)
        write_json(out, result)
        print(f"[{result['total_s']:.0f} s] {name} done", flush=True)

    infos = build(plan, root)
    settings = gm.make_settings(plan.device)
    record("models", {name: {"path": info.path, "size_bytes": info.size_bytes} for name, info in infos.items()})

    def left_s() -> float:
        return plan.budget_s - (time.perf_counter() - started)

    def save(partial: dict[str, Any]) -> None:
        result["packed"] = partial
        write_json(out, result)

    packed_settings = gm.make_settings(plan.device, packed_batches=True)
    record("packed", packed_section(plan, infos, packed_settings, embedding_texts(plan),
                                    lambda engine: rerank_pairs(plan, engine), left_s, save))
    if only_packed:
        result["complete"] = True
        record("total", round(time.perf_counter() - started, 1))
        return result
    embedding, compile_run = embedding_section(plan, infos["embedding"], settings)
    record("embedding", embedding)
    record("rerank", rerank_section(plan, infos["reranker"], settings))
    record("chat_transformers", chat_section(plan, infos["chat"], settings))
    record("switching", switching_section(plan, infos, settings))
    record("scheduler", scheduler_section(plan, infos, settings))
    left = plan.budget_s - (time.perf_counter() - started)
    skip = None if plan.compile else "off for this run (--smoke or --no-compile)"
    if left < COMPILE_MIN_LEFT_S:
        skip = skip or f"only {left:.0f} s of the {plan.budget_s:.0f} s budget left"
    result["complete"] = True
    record("embedding_compiled", compile_run(skip))
    return result


def print_table(result: dict[str, Any]) -> None:
    m, e, c, r, ch = (result[k] for k in ("machine", "embedding", "embedding_compiled", "rerank", "chat_transformers"))
    print(f"{m.get('gpu', 'CPU (smoke)')}; torch {m['torch']}, transformers {m['transformers']}; "
          f"stand-ins: {m['stand_ins'] or 'none'}; {result['total_s']} s in all")
    print(f"{'embedding tokens/s':<52}{'sorted':>12}{'naive':>12}{'ratio':>8}")
    print(f"{'  EmbeddingEngine.embed (' + str(e['parameters'] // 10**6) + 'M params)':<52}"
          f"{e['sorted_tokens_per_s']:>12,}{e['naive_tokens_per_s']:>12,}{e['speedup_sorted_over_naive']:>7.2f}x")
    print(f"{'  without the padding mask (causal: flash SDPA)':<52}{e['no_padding_mask']['sorted_tokens_per_s']:>12,}"
          f"   max |diff| {e['no_padding_mask']['max_abs_diff_vs_masked']:.2g}")
    if "sorted_tokens_per_s" in c:
        print(f"{'  + torch.compile per layer':<52}{c['sorted_tokens_per_s']:>12,}   first pass {c['first_pass_s']} s")
        print(f"{'  + torch.compile, without the padding mask':<52}{c['no_padding_mask']['sorted_tokens_per_s']:>12,}")
    else:
        print(f"  + torch.compile per layer: {c.get('skipped') or c.get('error')}")
    print(f"  goal >= {GOAL_TOKENS_PER_S:,} tokens/s: engine as is {e['goal_met']}; host padding per pass "
          f"{e['host_pad_ms_per_pass']} ms")
    print(f"{'rerank pairs/s (RerankEngine.score)':<52}{r['sorted_pairs_per_s']:>12,}{r['naive_pairs_per_s']:>12,}"
          f"{r['speedup_sorted_over_naive']:>7.2f}x")
    print(f"  host padding: {r['host_pad_ms_per_sorted_pass']} ms per sorted pass "
          f"({100 * r['host_pad_share_of_sorted_pass']:.0f}% of it)")
    print(f"chat, one stream: engine {ch['engine_tokens_per_s']} tokens/s vs generate {ch['raw_generate_tokens_per_s']}"
          f" ({ch['throughput_ratio']:.2f}x); TTFT {ch['engine_ttft_ms']} vs {ch['raw_ttft_ms']} ms")
    print(f"{'switching (s)':<14}{'cold load':>10}{'reload':>8}{'park':>8}{'restore':>9}{'pinned':>8}{'cold/pin':>9}")
    for name, s in result["switching"].items():
        print(f"{name:<14}{s['cold_load_s']:>10.2f}{s['reload_page_cache_warm_s']:>8.2f}{s['park_to_cpu_s']:>8.2f}"
              f"{s['restore_pageable_s']:>9.3f}{s['restore_pinned_s']:>8.3f}{s['cold_over_restore_pinned']:>8.0f}x")
        print(f"{'':<14}engine.park {s['engine_park_s']:.3f} s, engine.wake {s['engine_wake_s']:.3f} s "
              f"({s['engine_wake_over_cold_load']:.3f}x the cold load)")
    sc = result["scheduler"]
    print(f"scheduler (embedding, cache 1): first load {sc['cold_no_cpu_cache']['first_load_ms']} ms, cold switch "
          f"{sc['cold_switch_ms_median']} ms ({sc['cold_switch_over_first_load']:.2f}x), warm switch back "
          f"{sc['warm_switch_back_ms_median']} ms ({sc['warm_over_cold']:.3f}x cold); parked answers equal: "
          f"{sc['warm_parking']['parked_answers_equal']}")


COLUMNS = (*EAGER_VARIANTS, ENCODER_VARIANTS[1])


def print_packed(packed: dict[str, Any]) -> None:
    print(f"{'padding-free (eager), tokens/s':<40}" + "".join(f"{v[0]:>20}" for v in COLUMNS))
    for model, section in packed.items():
        rows = section["eager"]
        cells = [str(rows[n].get("tokens_per_s", "error")) if n in rows else "" for n, *_ in COLUMNS]
        print(f"{'  ' + model:<40}" + "".join(f"{c:>20}" for c in cells))
        gaps = ", ".join(f"{n} {r['max_cosine_gap_vs_padded']:.1e}" for n, r in rows.items() if "tokens_per_s" in r)
        print(f"{'':<4}max cosine gap vs padded: {gaps}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--budget-s", type=float, help="seconds after which optional runs are skipped (420)")
    parser.add_argument("--only-packed", action="store_true",
                        help="only the padding-free section (bench/gpu_packed.py)")
    parser.add_argument("--workdir", type=Path, help="where to build the models (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/gpu[-smoke].json)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    plan = replace(plan, compile=plan.compile and not args.no_compile, budget_s=args.budget_s or plan.budget_s)
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run `python -m bench gpu --smoke` for the CPU check", file=sys.stderr)
        return 2
    out = output_path("gpu", args.smoke, args.out)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.workdir) as tmp:
        result = measure(plan, Path(tmp), out, args.only_packed)
    print_packed(result["packed"])
    if not args.only_packed:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
