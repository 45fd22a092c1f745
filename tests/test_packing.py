"""Padding-free (packed) batches: the same vectors and rerank scores as padded batches, for encoders (BERT's
absolute positions, RoBERTa's counted from the padding id; a pooler or a classification head on the first
token) and decoders (last-token pooling, yes/no logits); planned by real tokens."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from common.discovery import scan_models
from common.settings import Settings
from tests.model_factory import MODEL_MAX_LENGTH, _build_bert_tokenizer, _save_model
from worker.engines import packing
from worker.engines.embedding import EmbeddingEngine
from worker.engines.pooling import pool
from worker.engines.rerank import RerankEngine
from worker.microbatch import plan_batches

TEXTS = ["hi", "a somewhat longer sentence about the weather today", "x y", "one more text " * 40,
         "short", "the quick brown fox jumps over the lazy dog " * 3]


def make_xlm_roberta(out_dir: Path, classifier: bool = False) -> Path:
    """Tiny random XLM-RoBERTa (an embedder, or a cross-encoder): positions start at padding_idx + 1, the case
    packing must offset; the cross-encoder's classification head reads the first token itself (no pooler)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    tokenizer = _build_bert_tokenizer(out_dir)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=128, max_position_embeddings=MODEL_MAX_LENGTH + 2, num_labels=1,
                              pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = XLMRobertaForSequenceClassification(config) if classifier else XLMRobertaModel(config)
        _save_model(model.eval(), out_dir)
    return out_dir


def engine_for(folder: Path, model: str, **settings: object) -> EmbeddingEngine:
    engine = EmbeddingEngine(scan_models(folder).models[model], Settings(device="cpu", **settings))
    engine.load()
    return engine


def both_paths(engine: EmbeddingEngine, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    assert engine.packed
    packed = engine.embed(seqs)
    engine.packed = False
    try:
        return packed, engine.embed(seqs)
    finally:
        engine.packed = True


@pytest.mark.parametrize("model", ["all-minilm-l6-v2", "tiny-qwen3-embedding"])
def test_packed_vectors_equal_padded(models_dir: Path, model: str) -> None:
    """Mixed lengths in one batch, more tokens in all than the model's position table (512)."""
    engine = engine_for(models_dir, model)
    seqs = engine.inputs.tokenize(TEXTS * 4)
    assert sum(map(len, seqs)) > 512
    packed, padded = both_paths(engine, seqs)
    np.testing.assert_allclose(packed, padded, atol=2e-5)
    engine.unload()


def test_positions_counted_from_the_padding_id(tmp_path: Path) -> None:
    make_xlm_roberta(tmp_path / "tiny-xlm-roberta")
    engine = engine_for(tmp_path, "tiny-xlm-roberta")
    assert packing.position_offset(engine.model) == engine.model.config.pad_token_id + 1
    packed, padded = both_paths(engine, engine.inputs.tokenize(TEXTS))
    np.testing.assert_allclose(packed, padded, atol=2e-5)


def rerank_engine(folder: Path, model: str) -> RerankEngine:
    engine = RerankEngine(scan_models(folder).models[model], Settings(device="cpu", packed_batches=True))
    engine.load()
    return engine


def both_scores(engine: RerankEngine) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = engine.inputs.encode("what is the weather like", TEXTS * 3)
    batch = list(zip(pairs.seqs, pairs.splits, strict=True))
    assert engine.packed
    return engine._score_packed(batch), engine._score_padded(batch)


@pytest.mark.parametrize("model", ["tiny-bert-reranker", "tiny-qwen3-reranker"])
def test_packed_rerank_scores_equal_padded(models_dir: Path, model: str) -> None:
    """BERT: token types per pair, the pooler on each pair's first token; Qwen3: yes/no at each pair's last."""
    packed, padded = both_scores(rerank_engine(models_dir, model))
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    assert padded[:, 0].std() > 0  # the pairs score differently: a mix-up between them would show


def test_packed_rerank_with_a_classification_head(tmp_path: Path) -> None:
    make_xlm_roberta(tmp_path / "tiny-xlm-roberta-reranker", classifier=True)
    packed, padded = both_scores(rerank_engine(tmp_path, "tiny-xlm-roberta-reranker"))
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_packing_off_keeps_padded_batches(models_dir: Path) -> None:
    engine = engine_for(models_dir, "all-minilm-l6-v2", packed_batches=False)
    assert not engine.packed
    assert engine.model.config._attn_implementation != packing.PACKED
    reranker = RerankEngine(scan_models(models_dir).models["tiny-bert-reranker"], Settings(device="cpu"))
    reranker.load()
    assert not reranker.packed  # rerankers pack only when LLM_PACKED_BATCHES=true


@pytest.mark.parametrize("modes", [("cls",), ("mean",), ("max",), ("lasttoken",), ("mean_sqrt_len_tokens",),
                                   ("cls", "mean")])
def test_pool_packed_equals_pool_of_padded(modes: tuple[str, ...]) -> None:
    lengths = [3, 1, 5]
    rows = [torch.randn(n, 4) for n in lengths]
    padded = torch.full((3, 5, 4), 99.0)  # what padding holds must not matter
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)], mask[i, : len(row)] = row, 1
    torch.testing.assert_close(packing.pool_packed(torch.cat(rows), lengths, modes), pool(padded, mask, modes))


def test_the_load_check_tells_different_results_apart() -> None:
    vectors = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    assert packing.matches(vectors, vectors + 1e-7, torch.float32)
    assert not packing.matches(vectors, torch.roll(vectors, 1, dims=-1), torch.float32)
    scores = torch.randn(3, 2)
    assert packing.same_scores(scores, scores + 1e-6, torch.float32)
    assert not packing.same_scores(scores, scores + 1e-2, torch.float32)


def test_packed_plan_counts_real_tokens_and_mixes_lengths() -> None:
    lengths = [2, 200, 3, 50]
    assert plan_batches(lengths, budget_tokens=300, max_items=8, packed=True) == [[0, 2, 3, 1]]
    assert len(plan_batches(lengths, budget_tokens=300, max_items=8)) == 3  # padded: cut where lengths jump
    assert plan_batches(lengths, budget_tokens=100, max_items=8, packed=True) == [[0, 2, 3], [1]]
    assert plan_batches(lengths, budget_tokens=300, max_items=2, packed=True) == [[0, 2], [3, 1]]


def varlen_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds_q: torch.Tensor, bounds_k: torch.Tensor,
                     max_q: int, max_k: int, dropout: float, causal: bool, debug: bool,
                     scale: float | None = None) -> tuple[torch.Tensor, None]:
    """What the CUDA flash kernel computes, on the CPU: [tokens, heads, dim] in and out, each sequence of the row
    (between consecutive bounds) on its own, grouped-query heads shared."""
    assert bounds_q.dtype == torch.int32 and torch.equal(bounds_q, bounds_k) and q.stride(-1) == 1
    cuts, groups = bounds_q.tolist(), q.shape[1] // k.shape[1]
    assert max_q == max_k == max(b - a for a, b in itertools.pairwise(cuts))
    out = torch.empty_like(q)
    for a, b in itertools.pairwise(cuts):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            qs, ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0), is_causal=causal,
            scale=scale).transpose(0, 1)
    return out, None


@pytest.mark.parametrize("model", ["all-minilm-l6-v2", "tiny-qwen3-embedding"])
def test_gpu_packed_path_layout(models_dir: Path, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path's handling of the row (one kernel call: views, bounds, grouped heads, output layout), with
    the CUDA kernel replaced by a reference of what it computes: the vectors are the padded path's."""
    engine = engine_for(models_dir, model)
    monkeypatch.setattr(packing, "_flash_fits", lambda query: True)
    monkeypatch.setattr(packing._Flash, "kernel", staticmethod(varlen_reference))
    seqs = engine.inputs.tokenize(TEXTS)
    packed, padded = both_paths(engine, seqs)
    np.testing.assert_allclose(packed, padded, atol=2e-5)
    engine.unload()
