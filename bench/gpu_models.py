"""Random-weight models of real shapes for `bench/gpu.py`, built on the spot (no network), and the
stand-ins that let the project's worker code import where only torch and transformers are installed.

Shapes: a Qwen3-0.6B-shaped embedding model (Qwen3-Embedding-0.6B's layout: last-token pooling,
normalised), a Qwen2.5-0.5B-shaped chat model and a BERT-base-shaped cross-encoder. Tokenizers come from
tests/model_factory.py (small local vocabularies; the models keep their real vocabulary sizes, and the
benchmark feeds token ids drawn from the whole vocabulary).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

EMBEDDING_SHAPE = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                   "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151669}
CHAT_SHAPE = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "intermediate_size": 4864, "vocab_size": 151936}
RERANK_SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "vocab_size": 30522}
TINY_DECODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                "head_dim": 32, "intermediate_size": 128, "vocab_size": 4096}
TINY_RERANK = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
               "vocab_size": 2048}
MAX_POSITIONS = 32768

# What the worker's engines read from `common.settings.Settings`, for machines without pydantic.
_SETTINGS_DEFAULTS: dict[str, Any] = {
    "device": "auto", "trust_remote_code": False, "embedding_truncate": True, "embedding_batch_tokens": None,
    "embedding_max_batch_size": 256, "rerank_batch_tokens": None, "rerank_max_batch_size": 128,
    "rerank_max_tokens_per_doc": 8192, "vllm_max_model_len": None, "chat_engine": "transformers",
    "chat_max_n": 16, "model_cache_size": 1, "models_dir": Path("models"),
    # the scheduler's (worker/scheduler.py, worker/policy/)
    "cpu_cache_gb": 8.0, "auto_unload_models": True, "model_idle_ttl_s": 300.0, "switch_starvation_s": 30.0,
    "load_retry_backoff_s": 30.0, "pinned_model_ids": (), "gpu_memory_utilization": 0.9,
    "available_gpu_memory_gb": None, "enable_gpu_memory_offload": True, "gpu_memory_offload_threshold_gb": 4.0,
    "vllm_kv_cache_gb": None, "vllm_dtype": "auto", "vllm_enforce_eager": None, "vllm_in_process": None,
    "vllm_handover_after_s": 0.0, "embedding_compile": False, "packed_batches": None,
}


class FallbackSettings:
    """Stands in for `common.settings.Settings` (pydantic) with the defaults the engines read."""

    def __init__(self, **overrides: Any) -> None:
        self.__dict__.update(_SETTINGS_DEFAULTS)
        self.__dict__.update(overrides)


def install_fallbacks() -> list[str]:
    """Make `worker.engines.*` importable with only torch and transformers: a stand-in `common.settings`
    when pydantic-settings is missing, an empty `msgpack` when msgpack is (only the wire protocol uses it).
    Returns what was stood in for."""
    shimmed = []
    try:
        import pydantic_settings  # noqa: F401
    except ImportError:
        module = types.ModuleType("common.settings")
        module.Settings = FallbackSettings  # type: ignore[attr-defined]
        sys.modules["common.settings"] = module
        shimmed.append("common.settings")
    try:
        import msgpack  # noqa: F401
    except ImportError:
        sys.modules["msgpack"] = types.ModuleType("msgpack")
        shimmed.append("msgpack")
    return shimmed


def make_settings(device: str, **overrides: Any) -> Any:
    from common.settings import Settings

    return Settings(device=device, **overrides)


def _token_id(tokenizer: Any, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


def _save(model: Any, folder: Path, dtype: Any) -> None:
    model.config.architectures = [type(model).__name__]
    model.config.dtype = dtype
    model.save_pretrained(str(folder), safe_serialization=True)


def _init_on(device: str, build: Any, dtype: Any) -> Any:
    """Construct a model with its random initialisation run on `device` (seconds on a GPU, not minutes)."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        return build().to(dtype).eval()


def _sentence_transformers_files(folder: Path, dimension: int, pooling: str, max_seq_length: int,
                                 lowercase: bool) -> None:
    """Transformer, Pooling (`pooling_mode_<pooling>`) and Normalize modules, as sentence-transformers saves them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dimension, f"pooling_mode_{pooling}": True}))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "2_Normalize" / "config.json").write_text("{}")
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": lowercase}))


def build_embedding(folder: Path, shape: dict[str, Any], device: str, dtype: Any) -> Path:
    """Qwen3ForCausalLM weights (tied head, so only the base model is saved) + sentence-transformers files
    for last-token pooling and normalisation, as Qwen3-Embedding ships them."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from tests.model_factory import ENDOFTEXT, IM_END, build_tokenizer

    tokenizer = build_tokenizer(folder, eos_append=True)
    config = Qwen3Config(**shape, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                         eos_token_id=_token_id(tokenizer, IM_END), pad_token_id=_token_id(tokenizer, ENDOFTEXT),
                         bos_token_id=None)
    auto: Any = AutoModelForCausalLM
    _save(_init_on(device, lambda: auto.from_config(config), dtype), folder, dtype)
    _sentence_transformers_files(folder, shape["hidden_size"], "lasttoken", 8192, lowercase=False)
    return folder


def build_chat(folder: Path, shape: dict[str, Any], device: str, dtype: Any) -> Path:
    """Qwen2ForCausalLM with a ChatML template; no end-of-sequence token in its generation config, so a
    random model's greedy decoding runs to max_tokens (a stop token would end it at random)."""
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    from tests.model_factory import ENDOFTEXT, build_tokenizer

    tokenizer = build_tokenizer(folder)
    config = Qwen2Config(**shape, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None, pad_token_id=_token_id(tokenizer, ENDOFTEXT))
    auto: Any = AutoModelForCausalLM
    generation: Any = GenerationConfig
    model = _init_on(device, lambda: auto.from_config(config), dtype)
    model.generation_config = generation(pad_token_id=config.pad_token_id)
    _save(model, folder, dtype)
    return folder


def build_encoder_embedding(folder: Path, shape: dict[str, Any], device: str, dtype: Any) -> Path:
    """BertModel + sentence-transformers files for mean pooling and normalisation (all-MiniLM-L6-v2's layout)."""
    from transformers import AutoModel, BertConfig

    from tests.model_factory import _build_bert_tokenizer

    tokenizer = _build_bert_tokenizer(folder)
    config = BertConfig(**shape, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    auto: Any = AutoModel
    _save(_init_on(device, lambda: auto.from_config(config), dtype), folder, dtype)
    _sentence_transformers_files(folder, shape["hidden_size"], "mean_tokens", 512, lowercase=True)
    return folder


def build_reranker(folder: Path, shape: dict[str, Any], device: str, dtype: Any) -> Path:
    """BertForSequenceClassification (one label) on the test BERT tokenizer."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    from tests.model_factory import make_bert_cross_encoder

    make_bert_cross_encoder(folder)  # tokenizer files (and a tiny model, replaced below)
    config = BertConfig.from_pretrained(folder)
    config.update({**shape, "max_position_embeddings": 512, "num_labels": 1, "initializer_range": 0.02})
    auto: Any = AutoModelForSequenceClassification
    _save(_init_on(device, lambda: auto.from_config(config), dtype), folder, dtype)
    return folder


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


SHIMMED = install_fallbacks()  # at import, so that `bench.gpu` can import the worker's engines next
