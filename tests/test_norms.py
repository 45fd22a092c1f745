"""RMSNorm through torch's fused kernel (worker/engines/norms.py): swapped where it gives the module's own
output, never where the module computes something else, and the engine's vectors unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from tests.test_packing import TEXTS, engine_for
from worker.engines import norms


class OffsetRMSNorm(torch.nn.Module):
    """Gemma's formula: the same attributes as Qwen3's norm, but it scales by 1 + weight."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((size,), 0.5))
        self.variance_epsilon = 1e-6

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scaled = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return scaled * (1 + self.weight)


def test_only_norms_the_kernel_reproduces_are_swapped() -> None:
    qwen, offset = Qwen3RMSNorm(16), OffsetRMSNorm(16)
    torch.nn.init.normal_(qwen.weight, 1.0, 0.2)
    x = torch.randn(3, 16)
    before = qwen(x), offset(x)
    swapped = norms.fuse(torch.nn.Sequential(qwen, offset))
    assert swapped == [qwen]
    assert "forward" in vars(qwen) and "forward" not in vars(offset)
    torch.testing.assert_close(qwen(x), before[0])
    torch.testing.assert_close(offset(x), before[1])
    norms.unfuse(swapped)
    assert "forward" not in vars(qwen)


def test_engine_vectors_with_fused_norms_equal_its_own(models_dir: Path) -> None:
    engine = engine_for(models_dir, "tiny-qwen3-embedding")
    assert engine.fused_norms, "a Qwen3 embedder's norms go through the fused kernel"
    seqs = engine.inputs.tokenize(TEXTS)
    fused = engine.embed(seqs)
    norms.unfuse(engine.fused_norms)
    np.testing.assert_allclose(fused, engine.embed(seqs), atol=1e-5)
    engine.unload()
