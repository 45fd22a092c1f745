"""The engine boundary: every model the worker serves is an Engine of one model type."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from common.discovery import ModelInfo
from common.protocol import ModelType
from common.settings import Settings

if TYPE_CHECKING:
    import torch

    from worker.policy.planner import Placement


TRANSFORMERS_IMPORT = threading.RLock()  # also held while an engine's modules are imported (make_engine)


def hf_import(*names: str) -> Any:
    """`from transformers import <names>` (one name: that object; several: a tuple), one thread at a time:
    transformers' lazy first imports are not thread-safe (a tokenizer and a model loading at once in two
    threads failed with "cannot import name 'AutoTokenizer'" in 2 of 5 fresh processes)."""
    with TRANSFORMERS_IMPORT:
        import transformers

        found = tuple(getattr(transformers, name) for name in names)
    return found[0] if len(found) == 1 else found


class Engine(ABC):
    """A loaded model. `load`/`unload`/`park`/`wake` are blocking (run them off the event loop)."""

    model_type: ClassVar[ModelType]
    packed = False  # runs padding-free batches (worker/engines/packing.py): the queue plans them by real tokens

    def __init__(self, info: ModelInfo, settings: Settings, placement: Placement | None = None) -> None:
        self.info = info
        self.settings = settings
        self.placement = placement  # from the scheduler's planner; None: all on pick_device's device

    @classmethod
    def warm_up(cls, models: Sequence[ModelInfo], settings: Settings) -> None:
        """Import (and cache) what loading these models will need, at worker start, in a thread, so that a
        first load does not pay it (imports under TRANSFORMERS_IMPORT). Engines whose imports are cheap keep
        this: nothing to do."""
        return None

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def unload(self) -> None: ...

    parked_bytes: int | None = None  # host memory its parked copy really holds (None: not parked, or unknown)

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

    _pinned: PinnedBuffer | None = None

    def park(self) -> bool:
        if not can_park(self.device, self.placement):
            return False
        self._pinned = park_module(self.model, self.device)
        self.parked_bytes = None if self._pinned is None else self._pinned.pinned_bytes
        return True

    def wake(self) -> None:
        wake_module(self.model, self.device)
        self._release_pinned()

    def unload(self) -> None:
        self._release_pinned()
        drop_model(self, self.device)

    def _release_pinned(self) -> None:
        """The parked copy is no longer needed (woken, or the engine unloaded): unpin it."""
        if self._pinned is not None:
            self._pinned.release()
            self._pinned, self.parked_bytes = None, None


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


class PinnedBuffer:
    """One CPU buffer, page-locked for fast copies to and from the GPU, of exactly the size asked for: plain
    memory registered with `cudaHostRegister`. (torch's pinned allocator rounds every allocation up to the next
    power of two: a 5.2 GiB model would pin 8 GiB.) Where registering is not possible, it falls back to that
    allocator and reports the rounded size, so LLM_CPU_CACHE_GB is checked against what is really pinned."""

    def __init__(self, nbytes: int) -> None:
        import torch

        self.tensor = torch.empty(nbytes, dtype=torch.uint8)
        self.registered = _host_register(self.tensor.data_ptr(), nbytes)
        if not self.registered:
            self.tensor = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.pinned_bytes = nbytes if self.registered else 1 << max(nbytes - 1, 0).bit_length()

    def release(self) -> None:
        if self.registered:
            import torch

            torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())  # type: ignore[no-untyped-call]
            self.registered = False
        del self.tensor


def _host_register(address: int, nbytes: int) -> bool:
    import torch

    cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
    register = getattr(cudart, "cudaHostRegister", None)
    if register is None or not hasattr(cudart, "cudaHostUnregister"):
        return False
    result = register(address, nbytes, 0)
    return int(getattr(result, "value", result)) == 0


def park_module(module: torch.nn.Module, device: str) -> PinnedBuffer | None:
    """Copy a module's weights into one pinned CPU buffer (a pinned copy comes back ~8x faster than a
    pageable one, and one large pinned allocation is far cheaper than one per tensor); free the GPU. None on
    a CPU: the weights are in CPU memory already and nothing moves."""
    import torch

    if device != "cuda":
        return None
    tensors = [*module.parameters(), *module.buffers()]
    sizes = [-(-t.numel() * t.element_size() // 64) * 64 for t in tensors]  # 64-byte aligned slots
    buffer = PinnedBuffer(sum(sizes))
    offset = 0
    with torch.no_grad():
        for tensor, size in zip(tensors, sizes, strict=True):
            nbytes = tensor.numel() * tensor.element_size()
            host = buffer.tensor[offset:offset + nbytes].view(tensor.dtype).view(tensor.shape)
            host.copy_(tensor.data, non_blocking=True)
            tensor.data = host
            offset += size
    torch.cuda.synchronize()
    free_memory(device, collect=False)  # the GPU tensors were released as each parameter moved
    return buffer


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


def pad_batch(batch: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (long) of a batch of sequences, right-padded to the longest: built with numpy
    (about 20 times faster on a 64k-token batch than a tensor per row), then moved to `device` (from pinned
    memory, without blocking, on CUDA)."""
    import numpy as np
    import torch

    lengths = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
    present = np.arange(int(lengths.max())) < lengths[:, None]
    ids = np.full(present.shape, pad_id, dtype=np.int64)
    ids[present] = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int64, count=int(lengths.sum()))
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(present.astype(np.int64))
    if device.startswith("cuda"):
        return ids_t.pin_memory().to(device, non_blocking=True), mask_t.pin_memory().to(device, non_blocking=True)
    return ids_t.to(device), mask_t.to(device)


def settle_heap() -> None:
    """Move every object alive now (imported modules, loaded models) out of the cyclic garbage collector's
    sight: its full passes otherwise scan millions of them, a tenth of a second and more each, and stall every
    job on the worker (p99 of one-text embeddings while a 2,048-text request ran: 257 ms with them, 54 ms
    without). Call once the process is up and after each model load."""
    gc.freeze()


def collect_garbage() -> None:
    """A full collection that also sees the settled objects (an unloaded model among them), then settle again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


UNLOADS_PER_COLLECTION = 4
_unloads_uncollected = 0


def collect_garbage_sometimes() -> None:
    """After an unload whose big tensors were released by hand, leaving small objects in cycles (vLLM's cached
    tokenizer among them: its class closes over the instance): `collect_garbage` at every fourth such unload,
    not at each (0.5-0.6 s each in a worker with vLLM imported, most of a chat switch on a CPU)."""
    global _unloads_uncollected
    _unloads_uncollected += 1
    if _unloads_uncollected >= UNLOADS_PER_COLLECTION:
        _unloads_uncollected = 0
        collect_garbage()


def free_memory(device: str, collect: bool = True) -> None:
    """Give back what an unloaded model held (call after dropping the last reference to it). A full
    `gc.collect` costs about a second in a worker with vLLM and transformers imported: `collect=False`
    when reference counting alone freed the model."""
    import torch

    if collect:
        collect_garbage()
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
