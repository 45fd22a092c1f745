"""Rotary embeddings in fewer passes (worker/engines/rotary.py): swapped in a model's modeling module only
where they give transformers' own results, and the engine's vectors unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.models.qwen3 import modeling_qwen3
from transformers.models.qwen3.modeling_qwen3 import Qwen3Config, Qwen3RotaryEmbedding

from tests.test_packing import TEXTS, engine_for
from worker.engines import rotary

OWN = modeling_qwen3.apply_rotary_pos_emb


def partial(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1) -> Any:
    """Rotates only the first half of each head (as partial-rotary models do)."""
    half = q.shape[-1] // 2
    rq, rk = OWN(q[..., :half], k[..., :half], cos[..., :half], sin[..., :half], unsqueeze_dim)
    return torch.cat([rq, q[..., half:]], -1), torch.cat([rk, k[..., half:]], -1)


def test_fast_form_is_checked_against_the_models_own() -> None:
    rope = Qwen3RotaryEmbedding(Qwen3Config(hidden_size=64, num_attention_heads=4, head_dim=16))
    like = torch.zeros(1)
    assert rotary.same(OWN, rope, 4, 16, like)
    assert not rotary.same(partial, rope, 4, 16, like)


def test_engine_vectors_with_fast_rotary_equal_its_own(models_dir: Path) -> None:
    engine = engine_for(models_dir, "tiny-qwen3-embedding")
    try:
        assert engine.fast_rotary
        assert modeling_qwen3.apply_rotary_pos_emb is rotary.apply_rotary_pos_emb
        seqs = engine.inputs.tokenize(TEXTS)
        fast = engine.embed(seqs)
        rotary.unfuse()
        assert modeling_qwen3.apply_rotary_pos_emb is OWN
        np.testing.assert_allclose(fast, engine.embed(seqs), atol=1e-5)
    finally:
        rotary.fuse(engine.model)
        engine.unload()


def test_fast_form_compiles() -> None:
    """LLM_EMBEDDING_COMPILE compiles the layers around it: inductor refused its in-place products."""
    rope = Qwen3RotaryEmbedding(Qwen3Config(hidden_size=64, num_attention_heads=4, head_dim=16))
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    with torch.inference_mode():
        cos, sin = rope(q, torch.arange(5)[None])
        compiled = torch.compile(rotary.apply_rotary_pos_emb, dynamic=True)(q, k, cos, sin)
        for got, expected in zip(compiled, OWN(q, k, cos, sin), strict=True):
            torch.testing.assert_close(got, expected)


class OddRotaryEmbedding(torch.nn.Module):
    """cos and sin whose halves differ: the fast form would rotate wrongly."""

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.rand(1, positions.shape[-1], 16, generator=torch.Generator().manual_seed(1))
        return angles.cos(), angles.sin()


def test_a_model_that_differs_undoes_its_familys_swap(models_dir: Path) -> None:
    """The swap is per modeling module: a later model of the family whose rotary the fast form does not give
    must get transformers' own function back (for all of them), not the swap an earlier model made."""
    engine = engine_for(models_dir, "tiny-qwen3-embedding")
    try:
        assert modeling_qwen3.apply_rotary_pos_emb is rotary.apply_rotary_pos_emb
        config = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        odd = torch.nn.Module()
        odd.config = config
        odd.attention = modeling_qwen3.Qwen3Attention(config, 0)
        odd.rope = OddRotaryEmbedding()
        assert not rotary.fuse(odd)
        assert modeling_qwen3.apply_rotary_pos_emb is OWN
    finally:
        rotary.fuse(engine.model)
        engine.unload()
