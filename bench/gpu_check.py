"""GPU check of the memory plan (issue 13), for a lent GPU: one command, a few minutes, no vLLM needed.

Drives the worker's own `Scheduler` in-process (torch and transformers only; stand-ins for pydantic-settings
and msgpack where missing, see bench/gpu_models.py), on random-weight models of real shapes built on the spot:
- co-residence: a Qwen3-0.6B-shaped embedding model, a BERT-base-shaped reranker and a Qwen2.5-0.5B-shaped
  chat model (transformers engine) resident together under LLM_AVAILABLE_GPU_MEMORY_GB=8; for each, the GPU
  bytes its plan holds it to against what `torch.cuda.mem_get_info` shows it took once loaded and after one
  batch of the size the plan assumes (goal: within 10 %);
- park and wake: the GPU memory a park gives back, the host bytes it pins (the buffer's size, and the
  process's locked memory), the wake time, answers equal before and after;
- offload: the embedding model under a budget smaller than itself, split between GPU and CPU memory by
  accelerate, answering like the CPU (fp32) reference (cosine).

    PYTHONPATH=. python3 -m bench.gpu_check     # one CUDA device; writes bench/results/gpu_check.json (copy it to
                                                # bench/reference/<kind>/ and `python -m bench report` for the page)
    python -m bench gpu_check --smoke           # tiny shapes on the CPU: the code paths only (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from bench import gpu_models as gm  # first: it stands in for what is missing
from bench.gpu_scheduler import _with
from bench.util import RESULTS, machine, output_path, write_json
from common.discovery import Catalog, ModelInfo, scan_models
from common.protocol import ModelType
from worker.engines.base import Engine
from worker.engines.registry import make_engine
from worker.models import ModelManager
from worker.scheduler import Scheduler

SECTION = "## GPU check of the memory plan"
BUDGET_GB = 8.0
TOLERANCE = 0.10
SEQ = 512


def _free() -> int:
    return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else 0


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS, VmLck, VmPin), 0 where absent."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.M)
    return int(match.group(1)) * 1024 if match else 0


def _work(engine: Engine, info: ModelInfo, tokens: int) -> Any:
    """One batch of the size the plan assumes (its padded-token budget; a long prompt for chat)."""
    rng = np.random.default_rng(0)
    vocab = info.shape.vocab if info.shape else 1000
    rows = [[int(t) for t in rng.integers(5, min(vocab, 2000), size=SEQ)] for _ in range(max(tokens // SEQ, 1))]
    if info.type is ModelType.EMBEDDING:
        return engine.embed(rows)  # type: ignore[attr-defined]
    if info.type is ModelType.RERANKER:
        return engine.score([(r, SEQ // 2) for r in rows])  # type: ignore[attr-defined]
    prompt = [t for row in rows for t in row][: min(tokens, 4096)]
    ids = torch.tensor([prompt], device=engine.device)  # type: ignore[attr-defined]
    with torch.inference_mode():
        return engine.model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)  # type: ignore[attr-defined]


async def coresident(infos: dict[str, ModelInfo], settings: Any) -> tuple[dict[str, Any], Scheduler]:
    manager = ModelManager(settings)
    manager.catalog = Catalog({i.id: i for i in infos.values()}, [])
    scheduler = Scheduler(settings, manager)
    scheduler.refresh()
    rows: dict[str, Any] = {}
    for n, info in enumerate(infos.values()):
        placement = scheduler.policy.placements[info.id]
        before = _free()
        started = time.perf_counter()
        engine = await scheduler.acquire(f"job-{n}", info.id, info.type, time.time())
        load_s = time.perf_counter() - started
        after_load = _free()
        tokens = placement.max_model_len or (settings.embedding_batch_tokens or 16384)
        await asyncio.to_thread(_work, engine, info, min(tokens, 16384))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        measured = before - _free()
        scheduler.release(f"job-{n}")
        rows[info.id] = {"type": str(info.type), "planned_gpu_bytes": placement.gpu_bytes,
                         "planned": placement.card(), "measured_after_load_bytes": before - after_load,
                         "measured_after_batch_bytes": measured, "load_s": round(load_s, 3),
                         "ratio": round(measured / placement.gpu_bytes, 3) if placement.gpu_bytes else None}
        ratio = rows[info.id]["ratio"]
        rows[info.id]["within_10pct"] = ratio is not None and abs(ratio - 1) <= TOLERANCE
    resident = sorted(scheduler.engines)
    return {"budget_bytes": scheduler.budget, "models": rows, "resident_together": resident,
            "all_resident": len(resident) == len(infos)}, scheduler


def park_and_wake(engine: Engine, info: ModelInfo) -> dict[str, Any]:
    probe = [[5 + i for i in range(32)], [7] * 48]
    answer = engine.embed(probe)  # type: ignore[attr-defined]
    free0, locked0, pinned0 = _free(), _status("VmLck"), _status("VmPin")
    started = time.perf_counter()
    parked = engine.park()
    park_s = time.perf_counter() - started
    free1, locked1, pinned1 = _free(), _status("VmLck"), _status("VmPin")
    started = time.perf_counter()
    engine.wake()
    wake_s = time.perf_counter() - started
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())  # type: ignore[attr-defined]
    return {"parked": parked, "park_s": round(park_s, 3), "wake_s": round(wake_s, 3), "weight_bytes": weights,
            "gpu_freed_bytes": free1 - free0, "pinned_buffer_bytes": engine.parked_bytes if parked else None,
            "process_locked_bytes_delta": locked1 - locked0, "process_pinned_bytes_delta": pinned1 - pinned0,
            "answers_equal_after_wake": bool(np.array_equal(answer, engine.embed(probe)))}  # type: ignore[attr-defined]


async def offload(info: ModelInfo, settings: Any) -> dict[str, Any]:
    """The embedding model under a budget of 60 % of its size: accelerate splits it; answers vs the CPU."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    budget_gb = 0.6 * info.size_bytes / 2**30
    small = _with(settings, available_gpu_memory_gb=budget_gb, embedding_batch_tokens=2048)
    manager = ModelManager(small)
    manager.catalog = Catalog({info.id: info}, [])
    scheduler = Scheduler(small, manager)
    scheduler.refresh()
    placement = scheduler.policy.placements[info.id]
    probe = [[5 + (i * 7) % 1000 for i in range(64)], [9] * 100, list(range(10, 300))]
    try:
        engine = await scheduler.acquire("offload", info.id, info.type, time.time())
        vectors = np.asarray(await asyncio.to_thread(engine.embed, probe))  # type: ignore[attr-defined]
        scheduler.release("offload")
    finally:
        await scheduler.close()
    cpu_engine = make_engine(info, _with(settings, device="cpu"))
    cpu_engine.load()
    expected = np.asarray(cpu_engine.embed(probe))  # type: ignore[attr-defined]
    cpu_engine.unload()
    cosine = (vectors * expected).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
    return {"budget_gb": round(budget_gb, 3), "placement": placement.card(), "offloaded": placement.offloaded,
            "min_cosine_vs_cpu": round(float(cosine.min()), 6), "answers_like_cpu": bool(cosine.min() >= 0.99)}


def build(folder: Path, smoke: bool) -> dict[str, ModelInfo]:
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
    shapes = {"embedding": gm.TINY_DECODER, "chat": gm.TINY_DECODER, "reranker": gm.TINY_RERANK} if smoke else \
        {"embedding": gm.EMBEDDING_SHAPE, "chat": gm.CHAT_SHAPE, "reranker": gm.RERANK_SHAPE}
    gm.build_embedding(folder / "embedding", shapes["embedding"], device, dtype)
    gm.build_reranker(folder / "reranker", shapes["reranker"], device, dtype)
    gm.build_chat(folder / "chat", shapes["chat"], device, dtype)
    catalog = scan_models(folder)
    return {name: catalog.models[name] for name in ("embedding", "reranker", "chat")}


def run(folder: Path, smoke: bool) -> dict[str, Any]:
    started = time.perf_counter()
    infos = build(folder, smoke)
    settings = _with(gm.make_settings("cpu" if smoke else "cuda"), available_gpu_memory_gb=BUDGET_GB,
                     chat_engine="transformers", model_cache_size=1, auto_unload_models=False)

    async def main() -> dict[str, Any]:
        together, scheduler = await coresident(infos, settings)
        try:
            parking = await asyncio.to_thread(park_and_wake, scheduler.engines["embedding"], infos["embedding"])
        finally:
            await scheduler.close()
        return {"coresident": together, "park_and_wake": parking,
                "offload": await offload(infos["embedding"], settings)}

    result: dict[str, Any] = {"machine": {**machine(), "gpu": torch.cuda.get_device_name() if
                                          torch.cuda.is_available() else None}, **asyncio.run(main())}
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [SECTION, "", f"{result['machine'].get('gpu')}, torch {result['machine'].get('torch')}, "
             f"`python -m bench gpu_check`, {result['total_s']} s; budget {BUDGET_GB:g} GiB "
             f"(LLM_AVAILABLE_GPU_MEMORY_GB); all resident together: {result['coresident']['all_resident']}.", "",
             "| model | planned GPU | measured (load + one batch) | ratio | within 10 % |", "|---|---|---|---|---|"]
    for model_id, row in result["coresident"]["models"].items():
        lines.append(f"| {model_id} ({row['type']}) | {row['planned_gpu_bytes'] / 2**30:.2f} GiB | "
                     f"{row['measured_after_batch_bytes'] / 2**30:.2f} GiB | {row['ratio']} | {row['within_10pct']} |")
    p, o = result["park_and_wake"], result["offload"]
    offload_line = o.get("skipped") or (f"budget {o['budget_gb']} GiB, offloaded {o['offloaded']}, min cosine vs "
                                        f"the CPU reference {o['min_cosine_vs_cpu']}")
    lines += ["", f"Park: {p['gpu_freed_bytes'] / 2**30:.2f} GiB of GPU memory back, "
              f"{(p['pinned_buffer_bytes'] or 0) / 2**30:.2f} GiB pinned for {p['weight_bytes'] / 2**30:.2f} GiB of "
              f"weights, park {p['park_s']} s, wake {p['wake_s']} s, answers equal: {p['answers_equal_after_wake']}.",
              f"Offload: {offload_line}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the code paths only)")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/gpu_check[-smoke].json)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run `python -m bench gpu_check --smoke` for the CPU check", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result = run(Path(tmp), args.smoke)
    write_json(output_path("gpu_check", args.smoke, args.out), result)
    print(table(result))
    return 0


if __name__ == "__main__":
    RESULTS.mkdir(exist_ok=True)
    sys.exit(main())
