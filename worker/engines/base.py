"""The engine boundary: every model the worker serves is an Engine of one model type."""

from __future__ import annotations

import asyncio
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from common.discovery import ModelInfo, ModelType
from common.settings import Settings

if TYPE_CHECKING:
    import torch

    from worker.scheduler.planner import Placement


class Engine(ABC):
    """A loaded model. `load`/`unload`/`park`/`wake` are blocking (run them off the event loop)."""

    model_type: ClassVar[ModelType]

    def __init__(self, info: ModelInfo, settings: Settings, placement: Placement | None = None) -> None:
        self.info = info
        self.settings = settings
        self.placement = placement  # from the scheduler's planner; None: all on pick_device's device

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def unload(self) -> None: ...

    def park(self) -> bool:
        """Keep the weights in CPU memory and free the GPU, for a warm switch back; False when this
        engine cannot (the caller then unloads it)."""
        return False

    def wake(self) -> None:
        """Back to serving from the parked copy: a copy, not a disk read."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    async def park_async(self) -> bool:
        """`park` off the event loop (engines whose own API is async, like vLLM's, override these two)."""
        return await asyncio.to_thread(self.park)

    async def wake_async(self) -> None:
        await asyncio.to_thread(self.wake)


class ParksModule(Engine):
    """`park`/`wake` for engines whose weights are one torch module, `self.model`, on `self.device`."""

    model: Any  # a transformers model (typed loosely: its methods are the model class's own)
    device: str

    def park(self) -> bool:
        if not can_park(self.device, self.placement):
            return False
        park_module(self.model, self.device)
        return True

    def wake(self) -> None:
        wake_module(self.model, self.device)


def from_pretrained(load: Callable[..., Any], device: str, placement: Placement | None, **kwargs: Any) -> Any:
    """`load(**kwargs)` (a transformers `from_pretrained`) on `device`; a placement that offloads part of
    the weights is split between the GPU and CPU memory by its `max_memory` (needs accelerate)."""
    max_memory = placement.max_memory() if placement is not None and device == "cuda" else None
    if max_memory:
        return load(device_map="auto", max_memory=max_memory, **kwargs).eval()
    return load(**kwargs).to(device).eval()


def can_park(device: str, placement: Placement | None) -> bool:
    """Whole-model weights can move to CPU memory and back (an offloaded model's hooks cannot)."""
    return placement is None or not placement.offloaded or device != "cuda"


def park_module(module: torch.nn.Module, device: str) -> None:
    """Copy a module's weights into one pinned CPU buffer (a pinned copy comes back ~8x faster than a
    pageable one, and one large pinned allocation is far cheaper than one per tensor); free the GPU."""
    import torch

    if device != "cuda":
        return  # already in CPU memory: parking keeps the object, nothing moves
    tensors = [*module.parameters(), *module.buffers()]
    sizes = [-(-t.numel() * t.element_size() // 64) * 64 for t in tensors]  # 64-byte aligned slots
    flat = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
    offset = 0
    with torch.no_grad():
        for tensor, size in zip(tensors, sizes, strict=True):
            nbytes = tensor.numel() * tensor.element_size()
            host = flat[offset:offset + nbytes].view(tensor.dtype).view(tensor.shape)
            host.copy_(tensor.data, non_blocking=True)
            tensor.data = host
            offset += size
    torch.cuda.synchronize()
    free_memory(device, collect=False)  # the GPU tensors were released as each parameter moved


def compile_layers(model: torch.nn.Module) -> bool:
    """torch.compile each repeated layer (regional compilation: one layer's code is compiled once and
    reused by all of them, with dynamic shapes, so it costs seconds, not minutes); False when the model
    has no `.layers` (or `.encoder.layer`) list."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    layers = getattr(model, "layers", None) or getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        return False
    for layer in layers:
        layer.compile(dynamic=True)
    return True


def wake_module(module: torch.nn.Module, device: str) -> None:
    import torch

    if device != "cuda":
        return
    module.to(device, non_blocking=True)
    torch.cuda.synchronize()


def pick_device(settings: Settings) -> str:
    import torch

    if settings.device != "auto":
        return settings.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, config_dtype: str | None) -> torch.dtype:
    """float32 on CPU (and for float32 checkpoints); the checkpoint's half precision on a GPU."""
    import torch

    if device == "cpu" or config_dtype in (None, "float32"):
        return torch.float32
    return torch.bfloat16 if config_dtype == "bfloat16" else torch.float16


def right_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a batch of sequences, right-padded to the longest (CPU, long)."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def free_memory(device: str, collect: bool = True) -> None:
    """Give back what an unloaded model held (call after dropping the last reference to it). A full
    `gc.collect` costs about a second in a worker with vLLM and transformers imported: `collect=False`
    when reference counting alone freed the model."""
    import gc

    import torch

    if collect:
        gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def drop_model(engine: object, device: str, attr: str = "model") -> None:
    """Delete `engine.<attr>` and give its memory back; collect cycles only if something still holds it."""
    ref = weakref.ref(getattr(engine, attr))
    delattr(engine, attr)
    free_memory(device, collect=ref() is not None)


def smallest_limit(*candidates: object) -> int:
    """The model's window: the smallest sane positive int among the candidates (configs, tokenizer)."""
    limits = [x for x in candidates if isinstance(x, int) and not isinstance(x, bool) and 0 < x < 10**7]
    if not limits:
        raise ValueError("the model states no maximum sequence length")
    return min(limits)
