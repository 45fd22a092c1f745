"""Memory plan: where each discovered model goes when resident, and the bytes it is held to. Pure.

Inputs: the discovered models (type, bytes on disk, dtype, shape, quantization), the device (`GpuInfo`:
total bytes and bytes free when the worker starts; None: no GPU), the settings (`PlannerParams`) and which
engine serves each chat model. Output: one :class:`Placement` per model, its budget broken down into
weights on the GPU, KV cache, activation workspace and CUDA context (`memory.py`), and, for vLLM, the
engine arguments derived from that budget alone (never from the global utilization setting):

- ``cuda``, all on the GPU: models up to ``LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB`` on disk, or any model
  when offload is disabled;
- ``cuda`` with ``cpu_offload_bytes`` of its weights in CPU memory (vLLM ``cpu_offload_gb``,
  transformers ``device_map="auto"`` with ``max_memory``): models above the threshold get the room the
  small models of the other types (up to ``LLM_MODEL_CACHE_SIZE`` each) leave free, so a big chat model
  stays co-resident with the embedding and reranker models; at least a quarter of the budget. A small
  model that alone exceeds the budget is offloaded too (when offload is enabled). Only weights move;
- ``cpu`` when there is no GPU.

The planner does not decide what is resident together: the policy keeps the sum of resident ``gpu_bytes``
within the budget, so every model finds at least its budget free when it loads (`vllm_start_check`
replays vLLM's own start-up test against that). GB settings are read as GiB (2**30 bytes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from common.discovery import ModelInfo
from common.protocol import ModelType
from common.settings import Settings
from worker.policy.memory import (
    CUDA_GRAPH_BYTES,
    DTYPE_BYTES,
    ENGINE_CONTEXT_BYTES,
    GIB,
    KV_BLOCK_TOKENS,
    PlanError,
    activation_bytes,
    compute_dtype_bytes,
    dtype_bytes,
    plan_kv,
)

__all__ = ["DTYPE_BYTES", "GIB", "GpuInfo", "Placement", "PlannerParams", "gpu_budget_bytes", "plan_placements"]

DEFAULT_WEIGHT_OVERHEAD = 0.05  # allocator rounding and small buffers beside the weights
KV_SPARE_SHARE = 0.5  # of the GPU room a chat model leaves unused, this much becomes extra KV cache
MIN_GPU_SHARE = 0.25  # an offloaded model keeps at least this share of the budget on the GPU
SMALL_GPU_BYTES = 16 * GIB  # below this budget, embedding and rerank batches are held to fewer tokens
ChatEngineKind = Literal["vllm", "transformers"]


@dataclass(frozen=True)
class GpuInfo:
    total_bytes: int
    free_bytes: int  # free when the worker starts, before any model (its own CUDA context already counted)

    @classmethod
    def simulated(cls, total_gb: float) -> GpuInfo:
        """A card of ``total_gb`` GiB as a freshly started worker sees it (`llm-interface plan --gpu-gb`)."""
        total = int(total_gb * GIB)
        return cls(total, max(total - ENGINE_CONTEXT_BYTES, 0))


@dataclass(frozen=True)
class Placement:
    model_id: str
    model_type: ModelType
    device: Literal["cuda", "cpu"]
    gpu_bytes: int  # its whole GPU budget when resident (0 on cpu): the sum of the parts below
    cpu_offload_bytes: int  # weights kept in CPU memory while resident on cuda
    weight_bytes: int  # all its weights: what a parked copy holds in CPU memory
    reason: str = ""
    kv_cache_bytes: int = 0
    activation_bytes: int = 0
    context_bytes: int = 0  # CUDA context of an engine in its own process
    max_model_len: int | None = None  # chat: the context the KV cache allows
    engine_args: Mapping[str, Any] = field(default_factory=dict, compare=False)  # vLLM's, from this budget
    error: str | None = None  # cannot be served as configured; the message names the settings

    @property
    def offloaded(self) -> bool:
        return self.cpu_offload_bytes > 0

    @property
    def cpu_offload_gb(self) -> float:
        """vLLM's ``cpu_offload_gb``."""
        return self.cpu_offload_bytes / GIB

    def max_memory(self, gpu_index: int = 0) -> dict[int | str, int] | None:
        """transformers ``max_memory`` for ``device_map="auto"``; None when nothing is offloaded."""
        if not self.offloaded:
            return None
        weights_on_gpu = self.gpu_bytes - self.kv_cache_bytes - self.activation_bytes - self.context_bytes
        return {gpu_index: weights_on_gpu, "cpu": self.cpu_offload_bytes}

    def card(self) -> dict[str, Any]:
        """What `/v1/models`, the status page and `llm-interface plan` show."""
        return {"device": self.device, "gpu_bytes": self.gpu_bytes, "cpu_offload_bytes": self.cpu_offload_bytes,
                "weight_bytes": self.weight_bytes, "kv_cache_bytes": self.kv_cache_bytes,
                "activation_bytes": self.activation_bytes, "context_bytes": self.context_bytes,
                "max_model_len": self.max_model_len, "engine_args": dict(self.engine_args), "reason": self.reason,
                "error": self.error}


@dataclass(frozen=True)
class PlannerParams:
    device: Literal["auto", "cuda", "cpu"] = "auto"
    gpu_memory_utilization: float = 0.9
    available_gpu_memory_gb: float | None = None
    enable_offload: bool = True
    offload_threshold_gb: float = 4.0
    model_cache_size: int = 1
    weight_overhead: float = DEFAULT_WEIGHT_OVERHEAD
    kv_cache_gb: float | None = None  # None: sized from the model (memory.plan_kv)
    max_model_len: int | None = None
    chat_dtype: str = "auto"
    enforce_eager: bool = False
    batch_tokens: int | None = None  # embedding padded tokens per batch; None: by device and budget
    rerank_batch_tokens: int | None = None
    overheads: bool = True  # False (tests): weights only, no KV, activation or context

    @classmethod
    def from_settings(cls, settings: Settings) -> PlannerParams:
        return cls(
            device=settings.device,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            available_gpu_memory_gb=settings.available_gpu_memory_gb,
            enable_offload=settings.enable_gpu_memory_offload,
            offload_threshold_gb=settings.gpu_memory_offload_threshold_gb,
            model_cache_size=settings.model_cache_size,
            kv_cache_gb=settings.vllm_kv_cache_gb,
            max_model_len=settings.vllm_max_model_len,
            chat_dtype=settings.vllm_dtype,
            enforce_eager=bool(settings.vllm_enforce_eager),  # unset: eager on a CPU only, where it does not count
            batch_tokens=settings.embedding_batch_tokens,
            rerank_batch_tokens=settings.rerank_batch_tokens,
        )


def gpu_budget_bytes(params: PlannerParams, gpu: GpuInfo | None) -> int | None:
    """The GPU budget of all models together: ``LLM_AVAILABLE_GPU_MEMORY_GB`` (at most what is free), else
    free memory x ``LLM_GPU_MEMORY_UTILIZATION``. None without a GPU or with ``LLM_DEVICE=cpu``."""
    if params.device == "cpu" or gpu is None:
        return None
    if params.available_gpu_memory_gb is not None:
        return min(int(params.available_gpu_memory_gb * GIB), gpu.free_bytes)
    return int(gpu.free_bytes * params.gpu_memory_utilization)


def default_batch_tokens(budget_bytes: int | None) -> int:
    """Padded tokens per embedding/rerank batch: small on a CPU (a padded token costs as much as a real one),
    large on a big GPU, in between on a small card (its activations must leave room for the other models)."""
    if budget_bytes is None:
        return 4096
    return 65536 if budget_bytes >= SMALL_GPU_BYTES else 16384


def weight_bytes(model: ModelInfo, params: PlannerParams) -> int:
    """Bytes of the model's weights once loaded: the bytes on disk, rescaled when a chat model loads in
    another dtype than it is stored in (never for quantized checkpoints: their kernels keep the packing)."""
    stored = dtype_bytes(model.dtype)
    loaded = dtype_bytes(params.chat_dtype) if model.type is ModelType.CHAT else None
    if model.quantization is not None or stored is None or loaded is None:
        return model.size_bytes
    return model.size_bytes * loaded // stored


@dataclass(frozen=True)
class _Demand:
    """A model's budget before placement: all of it would sit on the GPU if it fits."""

    weights: int
    kv: int = 0
    activation: int = 0
    context: int = 0
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    batched_tokens: int | None = None
    error: str | None = None

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.activation + self.context


def _demand(model: ModelInfo, params: PlannerParams, engine: ChatEngineKind, budget: int | None) -> _Demand:
    on_gpu = budget is not None
    weights = int(weight_bytes(model, params) * (1.0 + (params.weight_overhead if params.overheads else 0.0)))
    value = compute_dtype_bytes(model, params.chat_dtype if model.type is ModelType.CHAT else "auto", on_gpu)
    if model.type is not ModelType.CHAT:
        configured = params.batch_tokens if model.type is ModelType.EMBEDDING else params.rerank_batch_tokens
        tokens = configured or default_batch_tokens(budget)
        return _Demand(weights, activation=activation_bytes(model.shape, tokens, value) if params.overheads else 0)
    try:
        kv = plan_kv(model, value, kv_cache_gb=params.kv_cache_gb, max_model_len=params.max_model_len)
    except PlanError as exc:
        return _Demand(weights, error=str(exc))
    if not params.overheads:
        return _Demand(weights, max_model_len=kv.max_model_len)
    if engine == "transformers":  # one sequence at a time; its cache grows with it up to the context
        act = activation_bytes(model.shape, min(kv.max_model_len, 4096), value, logits_rows=1)
        return _Demand(weights, kv.bytes, act, max_model_len=kv.max_model_len)
    big_card = on_gpu and budget is not None and budget >= 64 * GIB
    batched = 8192 if big_card else 2048
    seqs = min(1024 if big_card else (256 if on_gpu else 128), max(16, kv.tokens // 256))
    act = activation_bytes(model.shape, batched, value, logits_rows=seqs)
    act += 0 if params.enforce_eager or not on_gpu else CUDA_GRAPH_BYTES
    return _Demand(weights, kv.bytes, act, ENGINE_CONTEXT_BYTES if on_gpu else 0, kv.max_model_len, seqs, batched)


def plan_placements(models: Iterable[ModelInfo], gpu: GpuInfo | None, params: PlannerParams,
                    engines: Mapping[str, ChatEngineKind] | None = None) -> dict[str, Placement]:
    """Each model's placement (see the module doc). ``engines``: the engine of each chat model (default vLLM)."""
    infos = list(models)
    budget = gpu_budget_bytes(params, gpu)
    demands = {m.id: _demand(m, params, (engines or {}).get(m.id, "vllm"), budget) for m in infos}
    plans: dict[str, Placement] = {}
    threshold = params.offload_threshold_gb * GIB
    big = {m.id for m in infos if params.enable_offload and m.size_bytes > threshold}
    small = [m for m in infos if m.id not in big]
    if budget is not None and params.kv_cache_gb is None and params.overheads:
        for m in infos:  # a chat model with room to spare next to the others gets a larger KV cache
            if demands[m.id].batched_tokens is not None:
                spare = budget - _reserve(m, small, demands, params) - demands[m.id].total
                demands[m.id] = _grow_kv(m, demands[m.id], spare, params)
    for m in infos:
        vllm = m.type is ModelType.CHAT and (engines or {}).get(m.id, "vllm") == "vllm"
        if budget is None:
            plans[m.id] = _finish(m, demands[m.id], "cpu", 0, "no GPU", vllm, None)
        elif m.id in big:
            share = max(budget - _reserve(m, small, demands, params), int(budget * MIN_GPU_SHARE))
            plans[m.id] = _on_gpu(m, demands[m.id], share, "above the offload threshold", vllm, gpu)
        else:
            cap = budget if params.enable_offload else None
            plans[m.id] = _on_gpu(m, demands[m.id], cap, "larger than the whole budget", vllm, gpu)
    return plans


def _grow_kv(model: ModelInfo, demand: _Demand, spare: int, params: PlannerParams) -> _Demand:
    """Give a vLLM chat model ``KV_SPARE_SHARE`` of the room the plan leaves unused as extra KV cache (more
    sequences side by side); the rest stays free for what the estimates miss."""
    if spare <= 0 or model.shape is None:
        return demand
    per_block = model.shape.kv_bytes_per_token(compute_dtype_bytes(model, params.chat_dtype, True)) * KV_BLOCK_TOKENS
    extra = int(spare * KV_SPARE_SHARE) // per_block * per_block
    tokens = (demand.kv + extra) // per_block * KV_BLOCK_TOKENS
    seqs = min(1024 if demand.batched_tokens == 8192 else 256, max(16, tokens // 256))
    return dataclasses.replace(demand, kv=demand.kv + extra, max_num_seqs=seqs)


def _on_gpu(model: ModelInfo, demand: _Demand, cap: int | None, why: str, vllm: bool,
            gpu: GpuInfo | None) -> Placement:
    """All on the GPU when it fits ``cap`` (None: no cap), else the excess weights offloaded."""
    if cap is None or demand.total <= cap:
        return _finish(model, demand, "cuda", 0, "fits on the GPU", vllm, gpu)
    offload = min(demand.weights, demand.total - cap)
    gpu_part = demand.total - offload
    reason = f"{why}: {gpu_part / GIB:.2f} GiB on the GPU, {offload / GIB:.2f} GiB offloaded to CPU memory"
    return _finish(model, demand, "cuda", offload, reason, vllm, gpu)


def _finish(model: ModelInfo, demand: _Demand, device: Literal["cuda", "cpu"], offload: int, reason: str,
            vllm: bool, gpu: GpuInfo | None) -> Placement:
    gpu_bytes = demand.total - offload if device == "cuda" else 0
    placement = Placement(
        model.id, model.type, device, gpu_bytes, offload, demand.weights, demand.error or reason,
        kv_cache_bytes=demand.kv, activation_bytes=demand.activation, context_bytes=demand.context,
        max_model_len=demand.max_model_len, error=demand.error)
    if not vllm or demand.error is not None:
        return placement
    args: dict[str, Any] = {"kv_cache_memory_bytes": demand.kv or None, "max_model_len": demand.max_model_len,
                            "max_num_seqs": demand.max_num_seqs, "max_num_batched_tokens": demand.batched_tokens,
                            "cpu_offload_gb": round(offload / GIB, 4)}
    if device == "cuda" and gpu is not None:
        args["gpu_memory_utilization"] = engine_utilization(gpu_bytes - demand.context, gpu.total_bytes)
    return dataclasses.replace(placement, engine_args=args)


def engine_utilization(engine_bytes: int, total_bytes: int) -> float:
    """vLLM's ``gpu_memory_utilization`` for an engine held to ``engine_bytes``: its share of the card's
    total memory (what vLLM multiplies it by), rounded up to 4 decimals."""
    return min(1.0, math.ceil(engine_bytes / total_bytes * 10_000) / 10_000)


def vllm_start_check(placement: Placement, free_bytes: int, total_bytes: int) -> str | None:
    """vLLM's own start-up test, replayed: its engine process takes its CUDA context, then needs
    ``gpu_memory_utilization x total`` free (it checks this even when the KV cache size is given). None when
    it passes, else why not."""
    util = placement.engine_args.get("gpu_memory_utilization")
    if util is None:
        return None
    requested = math.ceil(total_bytes * util)
    free = free_bytes - placement.context_bytes
    if free >= requested:
        return None
    return (f"vLLM needs {requested / GIB:.2f} GiB free for '{placement.model_id}' (gpu_memory_utilization "
            f"{util} of {total_bytes / GIB:.2f} GiB) but {free / GIB:.2f} GiB is free")


def _reserve(model: ModelInfo, small: list[ModelInfo], demands: Mapping[str, _Demand],
             params: PlannerParams) -> int:
    """GPU room kept for the small models that may be resident next to ``model``."""
    total = 0
    for model_type in ModelType:
        slots = params.model_cache_size - (1 if model_type is model.type else 0)
        sizes = sorted((demands[m.id].total for m in small if m.type is model_type and m.id != model.id),
                       reverse=True)
        total += sum(sizes[:max(slots, 0)])
    return total


def footprint_bytes(model: ModelInfo, params: PlannerParams, budget_bytes: int | None = 8 * GIB) -> int:
    """The model's whole budget if nothing were offloaded (tests and `llm-interface plan`)."""
    return _demand(model, params, "vllm", budget_bytes).total
