"""Placement planner: where each discovered model goes when it is resident. A pure function.

Inputs: the discovered models (type, bytes on disk, dtype), the GPU budget in bytes (None: no GPU),
and the offload settings. Output: one :class:`Placement` per model:

- ``cuda``, all on the GPU: models up to ``LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB`` on disk, or any
  model when offload is disabled;
- ``cuda`` with ``cpu_offload_bytes`` of its weights in CPU memory (vLLM ``cpu_offload_gb``,
  transformers ``device_map="auto"`` with ``max_memory``): models above the threshold get the GPU
  the small models of the other types (up to ``LLM_MODEL_CACHE_SIZE`` each) leave free, so a big
  chat model stays co-resident with the embedding and reranker models; at least a quarter of the
  budget. A small model that alone exceeds the budget is offloaded too (when offload is enabled);
- ``cpu`` when there is no GPU.

Resident memory is estimated from the bytes on disk: scaled by the load dtype when it differs from
the stored one (chat models follow ``LLM_VLLM_DTYPE``), plus ``weight_overhead`` (activations,
workspace, CUDA context share) and, for chat models, a KV-cache reserve (``LLM_VLLM_KV_CACHE_GB``,
else ``DEFAULT_KV_RESERVE_GB``). Only weights can be offloaded. The planner does not decide what is
resident together: the policy keeps the sum of resident placements within the budget and refuses a
model whose ``gpu_bytes`` exceeds it. GB settings are read as GiB (2**30 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from common.discovery import ModelInfo, ModelType
from common.settings import Settings

GIB = 1024**3
DEFAULT_WEIGHT_OVERHEAD = 0.10
DEFAULT_KV_RESERVE_GB = 1.0
MIN_GPU_SHARE = 0.25  # an offloaded model keeps at least this share of the budget on the GPU

DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "double": 8,
    "float32": 4, "float": 4, "fp32": 4,
    "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
    "int8": 1, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1,
}


@dataclass(frozen=True)
class Placement:
    model_id: str
    model_type: ModelType
    device: Literal["cuda", "cpu"]
    gpu_bytes: int  # what it holds on the GPU when resident (0 on cpu)
    cpu_offload_bytes: int  # weights kept in CPU memory while resident on cuda
    weight_bytes: int  # its weights: what a parked copy holds in CPU memory
    reason: str = ""

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
        return {gpu_index: self.gpu_bytes, "cpu": self.cpu_offload_bytes}


@dataclass(frozen=True)
class PlannerParams:
    device: Literal["auto", "cuda", "cpu"] = "auto"
    gpu_memory_utilization: float = 0.9
    available_gpu_memory_gb: float | None = None
    enable_offload: bool = True
    offload_threshold_gb: float = 4.0
    model_cache_size: int = 1
    weight_overhead: float = DEFAULT_WEIGHT_OVERHEAD
    chat_kv_reserve_gb: float = DEFAULT_KV_RESERVE_GB
    chat_dtype: str = "auto"

    @classmethod
    def from_settings(cls, settings: Settings) -> PlannerParams:
        return cls(
            device=settings.device,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            available_gpu_memory_gb=settings.available_gpu_memory_gb,
            enable_offload=settings.enable_gpu_memory_offload,
            offload_threshold_gb=settings.gpu_memory_offload_threshold_gb,
            model_cache_size=settings.model_cache_size,
            chat_kv_reserve_gb=settings.vllm_kv_cache_gb or DEFAULT_KV_RESERVE_GB,
            chat_dtype=settings.vllm_dtype,
        )


def gpu_budget_bytes(params: PlannerParams, free_device_bytes: int | None) -> int | None:
    """The GPU budget: ``LLM_AVAILABLE_GPU_MEMORY_GB``, else measured free memory x utilization.

    ``free_device_bytes`` is None when no GPU is present; the result is None (CPU only) then, or
    when ``LLM_DEVICE=cpu``. Measure once at start, before any model is loaded.
    """
    if params.device == "cpu" or free_device_bytes is None:
        return None
    if params.available_gpu_memory_gb is not None:
        return int(params.available_gpu_memory_gb * GIB)
    return int(free_device_bytes * params.gpu_memory_utilization)


def weight_bytes(model: ModelInfo, params: PlannerParams) -> int:
    """Bytes of the model's weights once loaded (the bytes on disk, rescaled to the load dtype)."""
    stored = DTYPE_BYTES.get((model.dtype or "").lower())
    load_dtype = params.chat_dtype if model.type is ModelType.CHAT else "auto"
    loaded = DTYPE_BYTES.get(load_dtype.lower())
    if stored is None or loaded is None:
        return model.size_bytes
    return model.size_bytes * loaded // stored


def footprint_bytes(model: ModelInfo, params: PlannerParams) -> int:
    """Estimated memory of the resident model: weights + overhead (+ KV-cache reserve for chat)."""
    weights = weight_bytes(model, params)
    kv = int(params.chat_kv_reserve_gb * GIB) if model.type is ModelType.CHAT else 0
    return int(weights * (1.0 + params.weight_overhead)) + kv


def plan_placements(models: Iterable[ModelInfo], budget_bytes: int | None,
                    params: PlannerParams) -> dict[str, Placement]:
    """Each model's placement (see the module doc); ``budget_bytes`` None means no GPU."""
    infos = list(models)
    if budget_bytes is None:
        return {m.id: _cpu(m, params) for m in infos}
    threshold = params.offload_threshold_gb * GIB
    big = {m.id for m in infos if params.enable_offload and m.size_bytes > threshold}
    small = [m for m in infos if m.id not in big]
    plans: dict[str, Placement] = {}
    for m in infos:
        if m.id in big:
            share = max(budget_bytes - _reserve(m, small, params), int(budget_bytes * MIN_GPU_SHARE))
            plans[m.id] = _on_gpu(m, share, params, "above the offload threshold")
        else:
            cap = budget_bytes if params.enable_offload else None
            plans[m.id] = _on_gpu(m, cap, params, "larger than the whole budget")
    return plans


def _cpu(model: ModelInfo, params: PlannerParams) -> Placement:
    return Placement(model.id, model.type, "cpu", 0, 0, weight_bytes(model, params), "no GPU")


def _on_gpu(model: ModelInfo, cap: int | None, params: PlannerParams, why: str) -> Placement:
    """All on the GPU when it fits ``cap`` (None: no cap), else the excess weights offloaded."""
    weights = weight_bytes(model, params)
    need = footprint_bytes(model, params)
    if cap is None or need <= cap:
        return Placement(model.id, model.type, "cuda", need, 0, weights, "fits on the GPU")
    offload = min(weights, need - cap)
    gpu = need - offload
    return Placement(model.id, model.type, "cuda", gpu, offload, weights,
                     f"{why}: {gpu / GIB:.2f} GiB on the GPU, {offload / GIB:.2f} GiB offloaded to CPU memory")


def _reserve(model: ModelInfo, small: list[ModelInfo], params: PlannerParams) -> int:
    """GPU room kept for the small models that may be resident next to ``model``."""
    total = 0
    for model_type in ModelType:
        slots = params.model_cache_size - (1 if model_type is model.type else 0)
        sizes = sorted((footprint_bytes(m, params) for m in small if m.type is model_type and m.id != model.id),
                       reverse=True)
        total += sum(sizes[:max(slots, 0)])
    return total
