"""RMSNorm layers through torch's own fused kernel (`torch.nn.functional.rms_norm`) instead of transformers'
six-step formula (upcast, square, mean, rsqrt, multiply, cast back, scale: each a pass over the activations).

In eager mode those passes cost a transformers decoder embedder about as much memory traffic as its matrix
products on a GPU (Qwen3 normalises every layer's input, its attention's input and each head's queries and
keys). Which classes are swapped is decided by what they compute, not by their name alone: a class is
swapped only when the fused kernel gives its own output on a probe, with the model's weights (a Gemma-style
`1 + weight` norm, say, keeps its own forward).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch

log = logging.getLogger(__name__)


def _fused(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    weight: torch.Tensor = self.weight
    return torch.nn.functional.rms_norm(hidden, weight.shape, weight, float(self.variance_epsilon))


def _shape(module: torch.nn.Module) -> bool:
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.nn.Parameter)
            and weight.dim() == 1 and isinstance(eps, float))


@torch.inference_mode()
def _same(module: Any) -> bool:
    """The fused kernel gives this module's output (within its precision) on a random probe."""
    weight: torch.Tensor = module.weight
    probe = torch.randn(8, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    try:
        own, fused = module(probe).float(), _fused(module, probe).float()
    except Exception as exc:  # a norm the kernel cannot take keeps its own forward
        log.debug("%s: not fused (%s)", type(module).__name__, exc)
        return False
    tolerance = 1e-5 if weight.dtype == torch.float32 else 2e-2
    return bool((own - fused).abs().max() <= tolerance * max(float(own.abs().max()), 1.0))


def fuse(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Route the model's RMSNorm modules through the fused kernel where it gives their output (checked once per
    class); the modules swapped, for `unfuse`."""
    verdicts: dict[type, bool] = {}
    swapped = []
    for module in model.modules():
        if not _shape(module):
            continue
        kind = type(module)
        if kind not in verdicts:
            verdicts[kind] = _same(module)
        if verdicts[kind]:
            module.forward = types.MethodType(_fused, module)
            swapped.append(module)
    if verdicts:
        log.info("RMSNorm fused: %s", ", ".join(f"{k.__name__} {'yes' if v else 'no'}" for k, v in verdicts.items()))
    return swapped


def unfuse(modules: list[torch.nn.Module]) -> None:
    """Back to each module's own forward."""
    for module in modules:
        vars(module).pop("forward", None)
