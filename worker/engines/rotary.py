"""Rotary position embeddings in half the memory passes of transformers' own `apply_rotary_pos_emb`.

transformers rotates queries and keys as `x * cos + rotate_half(x) * sin`: a negation, a concatenation, two
products and a sum, each a pass over the tensor (on a GPU in eager mode about a third of a Qwen3 embedder's
time went there). With cos and sin made of two equal halves (`cat(freqs, freqs)`, transformers' layout),
each half of the result is `x1 * c - x2 * s` and `x2 * c + x1 * s`: two products and two fused
multiply-adds on half-sized views, written in place.

transformers calls the function by its module-level name, so the swap is per modeling module (for every model
of that family in the process). A module's function is swapped only where its signature is the standard one
and, with the model's own rotary embedding, the fast form gives its results on a probe.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

_SIGNATURE = ["q", "k", "cos", "sin", "unsqueeze_dim"]
_swapped: dict[str, Callable[..., Any]] = {}  # modeling module name -> its own function


def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    # Out of place under autograd (no writes into views) and under torch.compile (which fuses it anyway, and
    # whose inductor failed on the `out=` products: "mul expected 2 arguments, got 3").
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and x.requires_grad):
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    out = torch.empty_like(x)  # the input's strides (the layers' own layout)
    first, second = out[..., :half], out[..., half:]
    torch.mul(x1, c, out=first)
    first.addcmul_(x2, s, value=-1)
    torch.mul(x2, c, out=second)
    second.addcmul_(x1, s)
    return out


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' `apply_rotary_pos_emb`, for cos and sin of two equal halves."""
    half = cos.shape[-1] // 2
    c, s = cos[..., :half].unsqueeze(unsqueeze_dim), sin[..., :half].unsqueeze(unsqueeze_dim)
    return _rotate(q, c, s), _rotate(k, c, s)


@torch.inference_mode()
def same(own: Callable[..., Any], rope: torch.nn.Module, heads: int, dim: int, like: torch.Tensor) -> bool:
    """The fast form gives `own`'s queries and keys, with cos and sin from `rope` (the model's rotary embedding)."""
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 7, n, dim, generator=generator).to(like.device, like.dtype).transpose(1, 2)
            for n in (heads, max(heads // 2, 1)))
    try:
        cos, sin = rope(q, torch.arange(40, 47, device=like.device)[None])
        expected, got = own(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)
    except Exception as exc:  # a rotary embedding that takes other arguments keeps its own function
        log.debug("rotary: not swapped (%s)", exc)
        return False
    tolerance = 1e-5 if like.dtype == torch.float32 else 2e-2
    return all(a.shape == b.shape and bool((a.float() - b.float()).abs().max() <= tolerance * max(
        float(a.abs().max()), 1.0)) for a, b in zip(expected, got, strict=True))


def _module_and_rope(model: torch.nn.Module) -> tuple[ModuleType, torch.nn.Module, int, int] | None:
    """The modeling module of the model's attention, its rotary embedding, heads and head size."""
    rope = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    attention = next((m for m in model.modules() if hasattr(m, "head_dim") and hasattr(m, "q_proj")), None)
    if rope is None or attention is None:
        return None
    module = sys.modules.get(type(attention).__module__)
    if module is None or not callable(getattr(module, "apply_rotary_pos_emb", None)):
        return None
    heads = int(getattr(model.config, "num_attention_heads", 2))
    return module, rope, heads, int(getattr(attention, "head_dim"))  # noqa: B009 - an int attribute, not a submodule


def fuse(model: torch.nn.Module) -> bool:
    """Swap the model's modeling module's `apply_rotary_pos_emb` for the fast form where it gives the same
    results (once per module); True when the model's attention now uses it."""
    found = _module_and_rope(model)
    if found is None:
        return False
    module, rope, heads, dim = found
    own = _swapped.get(module.__name__, module.apply_rotary_pos_emb)
    if list(inspect.signature(own).parameters) != _SIGNATURE:
        return False
    weight = next(model.parameters())
    if not same(own, rope, heads, dim, weight):  # checked for every model: one of the family may differ
        log.info("rotary: %s keeps its own apply_rotary_pos_emb (the fast form differs)", module.__name__)
        if module.__name__ in _swapped:  # the swap is module-wide: back to its own for every model of it
            setattr(module, "apply_rotary_pos_emb", _swapped.pop(module.__name__))  # noqa: B010
        return False
    if module.__name__ in _swapped:
        return True
    _swapped[module.__name__] = own
    setattr(module, "apply_rotary_pos_emb", apply_rotary_pos_emb)  # noqa: B010 - a module attribute mypy cannot see
    log.info("rotary: %s uses the fast apply_rotary_pos_emb", module.__name__)
    return True


def unfuse() -> None:
    """Every swapped module back to its own function."""
    for name, own in _swapped.items():
        setattr(sys.modules[name], "apply_rotary_pos_emb", own)  # noqa: B010
    _swapped.clear()
