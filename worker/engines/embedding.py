"""Transformers embedding engine: tokenise, run packed (padding-free) or padded batches, pool, normalise."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InvalidRequest
from common.protocol import ModelType
from common.settings import Settings
from worker.engines import norms, packing, rotary
from worker.engines.base import (
    ParksModule,
    compile_layers,
    from_pretrained,
    hf_import,
    pad_batch,
    pick_device,
    pick_dtype,
    smallest_limit,
)
from worker.engines.pooling import pool, read_spec

# Characters kept of a text input before tokenising: far more than any model's window needs,
# and it keeps a 1 MB string from costing seconds of tokenisation only to be truncated.
CHARS_PER_TOKEN_CAP = 32


def _is_decoder(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or bool(config.get("is_decoder"))


class EmbeddingInputs:
    """The cheap half of an embedding model: tokenizer, pooling recipe and limits (no weights)."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        AutoTokenizer = hf_import("AutoTokenizer")

        with (folder / "config.json").open(encoding="utf-8") as fh:
            self.config: dict[str, Any] = json.load(fh)
        self.settings = settings
        self.spec = read_spec(folder, _is_decoder(self.config))
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.transformer_dir, local_files_only=True)
        self.max_length = smallest_limit(self.spec.max_seq_length, self.config.get("max_position_embeddings"),
                                         getattr(self.tokenizer, "model_max_length", None))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.vocab_size = int(self.config.get("vocab_size") or len(self.tokenizer))
        self.dimension = int(self.config.get("hidden_size", 0)) * len(self.spec.modes)

    def tokenize(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Token ids per input, truncated to the model's window (or a 400 if truncation is off)."""
        truncate = self.settings.embedding_truncate
        if inputs and isinstance(inputs[0], list):
            ids = [[int(t) for t in x] for x in inputs]
            if any(t < 0 or t >= self.vocab_size for x in ids for t in x):
                raise InvalidRequest(f"token ids must be in [0, {self.vocab_size})", param="input")
        else:
            cap = self.max_length * CHARS_PER_TOKEN_CAP
            texts = [str(x)[:cap] for x in inputs]
            if self.spec.lowercase:
                texts = [t.lower() for t in texts]
            ids = self._encode(texts, truncate)
        too_long = [i for i, x in enumerate(ids) if len(x) > self.max_length]
        if too_long and not truncate:
            i = too_long[0]
            raise InvalidRequest(
                f"input[{i}] has {len(ids[i])} tokens; this model takes at most {self.max_length}",
                param="input", code="context_length_exceeded")
        return [x[: self.max_length] for x in ids]

    def _encode(self, texts: list[str], truncate: bool) -> list[list[int]]:
        limit = self.max_length if truncate else None
        if self.spec.chat_format:  # as sentence-transformers 6 does for its "message" modality
            texts = [str(self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False))
                     for t in texts]
        encoded = self.tokenizer(texts, truncation=truncate, max_length=limit,
                                 add_special_tokens=not self.spec.chat_format)
        return [list(x) for x in encoded["input_ids"]]

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and self.dimension and dimensions > self.dimension:
            raise InvalidRequest(
                f"dimensions={dimensions} is larger than the model's {self.dimension}", param="dimensions")


class EmbeddingEngine(ParksModule):
    model_type = ModelType.EMBEDDING

    def load(self) -> None:
        AutoModel = hf_import("AutoModel")

        self.inputs = EmbeddingInputs(Path(self.info.path), self.settings)
        self.device = pick_device(self.settings)
        self.model = from_pretrained(
            AutoModel.from_pretrained, self.device, self.placement, pretrained_model_name_or_path=str(
                self.inputs.spec.transformer_dir), dtype=pick_dtype(self.device, self.info.dtype),
            local_files_only=True, trust_remote_code=self.settings.trust_remote_code)
        # Decoders would otherwise fill a KV cache nobody reads (every layer's keys and values copied).
        takes_cache = "use_cache" in inspect.signature(self.model.forward).parameters
        self.forward_kwargs: dict[str, Any] = {"use_cache": False} if takes_cache else {}
        # Causal attention: right padding never reaches a real token, so the forward pass needs no mask
        # (and attention then runs its fastest kernel); pooling still uses it.
        attention = [m for m in self.model.modules() if hasattr(m, "is_causal")]
        self.causal = bool(attention) and all(bool(m.is_causal) for m in attention)
        self.fused_norms = norms.fuse(self.model)
        self.fast_rotary = rotary.fuse(self.model)
        if self.settings.embedding_compile and self.device == "cuda":
            compile_layers(self.model)  # ~2.5x tokens/s on an H100; each model's first batches compile
        self.packed = self._try_packing()

    @torch.inference_mode()
    def _try_packing(self) -> bool:
        """Packed batches (worker/engines/packing.py) where they are on and give the padded path's vectors."""
        self.offset = packing.position_offset(self.model)
        probe = [[int(t) % self.inputs.vocab_size for t in range(7, 7 + n)] for n in (5, 2, 9)]

        def same() -> bool:
            return packing.matches(self._embed_packed(probe), self._embed_padded(probe), self.model.dtype)

        return packing.try_enable(self.model, self.info.id, self.settings.packed_batches, self.device, same)

    @torch.inference_mode()
    def embed(self, batch: list[list[int]]) -> np.ndarray:
        """Pooled (and normalised when the model says so) float32 vectors, one row per sequence."""
        return (self._embed_packed(batch) if self.packed else self._embed_padded(batch)).cpu().numpy()

    def _embed_packed(self, batch: list[list[int]]) -> torch.Tensor:
        ids, positions = packing.packed_inputs(batch, self.device, self.offset)
        lengths = [len(seq) for seq in batch]
        with packing.segments(lengths):
            hidden = self.model(input_ids=ids, position_ids=positions, **self.forward_kwargs).last_hidden_state
        return self._finish(packing.pool_packed(hidden[0], lengths, self.inputs.spec.modes))

    def _embed_padded(self, batch: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_batch(batch, self.inputs.pad_id, self.device)
        unmasked = self.causal or min(map(len, batch)) == max(map(len, batch))  # nothing a mask would hide
        hidden = self.model(input_ids=ids, attention_mask=None if unmasked else mask,
                            **self.forward_kwargs).last_hidden_state
        return self._finish(pool(hidden, mask, self.inputs.spec.modes))

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        vectors = pooled.float()
        if self.inputs.spec.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors


def shape_vector(vector: np.ndarray, dimensions: int | None) -> bytes:
    """OpenAI `dimensions`: keep the first N values and re-normalise; little-endian float32 bytes."""
    if dimensions is not None:
        vector = vector[:dimensions]
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()
