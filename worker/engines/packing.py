"""Padding-free forward passes for transformers encoders and decoders: a batch's sequences end to end in one row.

A padded batch computes every layer on `longest x count` tokens; a packed one on the real tokens only, so a
batch can take sequences of any mix of lengths at no padding cost (as TEI does with variable-length
attention). The row carries each sequence's own positions (0, 1, ... per sequence), and attention runs on
each sequence's own span: the model's attention goes through transformers' attention interface under the
name `PACKED`, which while `segments` are set runs one variable-length flash attention call over the whole
row on a CUDA device in half precision (`torch.ops.aten._flash_attention_forward` with each sequence's
bounds, what `torch.nn.attention.varlen` wraps), else scaled-dot-product attention per span; without
`segments` it is plain `sdpa`, so the same model still serves padded batches. A model whose attention or positions do
not go through those (remote code, say) gives different results; `try_enable` compares the two paths on a
probe batch at load, and such a model keeps padded batches. Embedding models and rerankers use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from worker.engines.base import hf_import

log = logging.getLogger(__name__)

PACKED = "llm_packed"
_segments: contextvars.ContextVar[Segments | None] = contextvars.ContextVar("packed_segments", default=None)


class Segments:
    """The packed row's sequence lengths, and (made at the first attention call, shared by every layer) their
    cumulative bounds as the flash kernel takes them."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = tuple(lengths)
        self.longest = max(lengths, default=0)
        self._bounds: torch.Tensor | None = None

    def bounds(self, device: torch.device) -> torch.Tensor:
        if self._bounds is None:
            sizes = torch.tensor((0, *self.lengths), dtype=torch.int32)
            self._bounds = torch.cumsum(sizes, 0, dtype=torch.int32).to(device, non_blocking=True)
        return self._bounds


def _flash_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool,
                  scaling: float | None, row: Segments) -> torch.Tensor:
    """One flash attention call over every sequence of the row: [1, heads, tokens, dim] in (key and value may
    have fewer heads: grouped-query attention), [1, tokens, heads, dim] out."""
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [tokens, heads, dim] views
    if not _Flash.takes_views:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    bounds = row.bounds(query.device)
    try:
        out: torch.Tensor = _Flash.kernel(q, k, v, bounds, bounds, row.longest, row.longest, 0.0, causal, False,
                                          scale=scaling)[0]
    except RuntimeError:
        if not _Flash.takes_views:
            raise
        _Flash.takes_views = False  # a kernel build that wants packed rows: copy from now on
        return _flash_varlen(query, key, value, causal, scaling, row)
    return out[None]


class _Flash:
    takes_views = True  # the kernel reads strided [tokens, heads, dim] views (the layers' own layout) as they are

    @staticmethod
    def kernel(*args: Any, **kwargs: Any) -> Any:
        return torch.ops.aten._flash_attention_forward(*args, **kwargs)


def _flash_fits(query: torch.Tensor) -> bool:
    """What the flash kernel takes: a CUDA device of compute capability 8.0 or newer, half precision, head
    size a multiple of 8 up to 256."""
    dim = query.shape[-1]
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dim % 8 == 0 and dim <= 256
            and _ampere_or_newer(query.device.index or 0))


_CAPABILITY: dict[int, bool] = {}  # by CUDA device index (a dict, not lru_cache: torch.compile traces this)


def _ampere_or_newer(index: int) -> bool:
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _CAPABILITY[index]


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs: Any,
               ) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: [1, heads, tokens, dim] in, [1, tokens, heads, dim] out."""
    row = _segments.get()
    if row is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    causal = bool(getattr(module, "is_causal", False))
    if _flash_fits(query):
        return _flash_varlen(query, key, value, causal, scaling, row), None
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    spans, start = [], 0
    for n in row.lengths:
        end = start + n
        spans.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=causal, scale=scaling))
        start = end
    return torch.cat(spans, dim=2).transpose(1, 2).contiguous(), None


def _mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """No mask while packed (the spans are the mask); `sdpa`'s own otherwise."""
    if _segments.get() is not None:
        return None
    from transformers.masking_utils import sdpa_mask

    result: torch.Tensor | None = sdpa_mask(*args, **kwargs)
    return result


def register() -> None:
    """Make `PACKED` known to transformers (again: the same functions)."""
    attention, masks = hf_import("AttentionInterface", "AttentionMaskInterface")
    attention.register(PACKED, _attention)
    masks.register(PACKED, _mask)


def try_enable(model: Any, name: str, wanted: bool | None, device: str, same: Callable[[], bool]) -> bool:
    """Switch `model` to `PACKED` attention when packing is wanted (`LLM_PACKED_BATCHES`; unset: on a CPU) and
    `same()` (packed against padded results of a probe batch) holds; else leave it as it was."""
    if not (device == "cpu" if wanted is None else wanted):
        return False
    previous = model.config._attn_implementation
    try:
        register()
        model.set_attn_implementation(PACKED)
        packed = same()
    except Exception as exc:  # a model class that refuses the attention interface, or fails packed
        log.info("%s: packing failed (%s)", name, exc)
        packed = False
    if not packed:
        model.set_attn_implementation(previous)
    log.info("%s: %s batches", name, "packed (padding-free)" if packed else "padded")
    return packed


@contextlib.contextmanager
def segments(lengths: list[int]) -> Iterator[None]:
    """The packed row's sequence lengths, for the attention calls inside."""
    token = _segments.set(Segments(lengths))
    try:
        yield
    finally:
        _segments.reset(token)


def position_offset(model: torch.nn.Module) -> int:
    """Where a sequence's positions start: RoBERTa-style embeddings count from `padding_idx + 1`."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return int(padding_idx) + 1 if isinstance(padding_idx, int) else 0


def packed_inputs(batch: list[list[int]], device: str, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and positions, [1, total tokens] each."""
    ids = torch.tensor([t for seq in batch for t in seq], dtype=torch.long)
    positions = torch.cat([torch.arange(offset, offset + len(seq)) for seq in batch])
    return ids[None].to(device), positions[None].to(device)


def packed_type_ids(lengths: list[int], splits: list[int], device: str) -> torch.Tensor:
    """Token type ids, [1, total tokens]: per sequence 0 for its first `split` tokens, 1 after."""
    types = torch.cat([(torch.arange(n) >= split).long() for n, split in zip(lengths, splits, strict=True)])
    return types[None].to(device)


def bounds(lengths: list[int], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's first token and its end (exclusive) in the packed row."""
    sizes = torch.tensor(lengths, device=device)
    stops = torch.cumsum(sizes, 0)
    return stops - sizes, stops


def pool_packed(hidden: torch.Tensor, lengths: list[int], modes: tuple[str, ...]) -> torch.Tensor:
    """Pool [total tokens, dim] hidden states per sequence (modes as `pooling.pool`, concatenated)."""
    starts, stops = bounds(lengths, str(hidden.device))
    sizes = stops - starts
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[starts])
        elif mode == "lasttoken":
            parts.append(hidden[stops - 1])
        elif mode == "max":
            parts.append(torch.stack([span.max(dim=0).values for span in torch.split(hidden, lengths)]))
        else:
            # Summed in float32: on CUDA, index_add_ adds each row to the total in the tensor's own precision,
            # and in bfloat16 a 500-token sum drifted by up to 2e-3 cosine from the padded path's `sum`.
            owner = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), sizes)
            summed = torch.zeros(len(lengths), hidden.shape[-1], dtype=torch.float32,
                                 device=hidden.device).index_add_(0, owner, hidden.float())
            count = sizes.to(torch.float32)[:, None]
            parts.append((summed / (count if mode == "mean" else count.sqrt())).to(hidden.dtype))
    return torch.cat(parts, dim=-1)


def matches(packed: torch.Tensor, padded: torch.Tensor, dtype: torch.dtype) -> bool:
    """The packed path's vectors are the padded path's: cosine within 1e-4 in fp32 (1e-3 in half precision)."""
    tolerance = 1e-4 if dtype == torch.float32 else 1e-3
    cosine = torch.nn.functional.cosine_similarity(packed.float(), padded.float(), dim=-1)
    return bool((1 - cosine).max() <= tolerance)


def same_scores(packed: torch.Tensor, padded: torch.Tensor, dtype: torch.dtype) -> bool:
    """The packed path's scores are the padded path's: within 1e-4 (1e-2 in half precision), relative 1e-3."""
    return torch.allclose(packed.float(), padded.float(), rtol=1e-3, atol=1e-4 if dtype == torch.float32 else 1e-2)
