"""Reranker engine: score (query, document) pairs with a cross-encoder or a yes/no causal LM.

Two kinds of model folders:
- cross-encoders (`*ForSequenceClassification`): the pair is tokenised as the tokenizer pairs two
  texts (`[CLS] query [SEP] document [SEP]`, token type ids), as sentence-transformers' CrossEncoder
  does. One label: score = the model's sentence-transformers activation of the logit (sigmoid unless
  the folder's config names another, as CrossEncoder does); several labels: score = softmax
  probability of the last label (or of `options.label` from `llm-interface.json`); raw score = that
  label's logit.
- causal LMs in the Qwen3-Reranker style: the yes/no judging prompt, score = P("yes") =
  softmax([logit("no"), logit("yes")])[1] at the last position; raw score = logit("yes") - logit("no").

Pairs longer than the model's window are truncated, document side first (then the query's end).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.discovery import CAUSAL_LM_SUFFIXES, read_options
from common.errors import InvalidRequest
from common.protocol import ModelType
from common.settings import Settings
from worker.engines import norms, packing, rotary
from worker.engines.base import (
    ParksModule,
    from_pretrained,
    hf_import,
    pad_batch,
    pick_device,
    pick_dtype,
    smallest_limit,
)
from worker.engines.embedding import CHARS_PER_TOKEN_CAP

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
YES_NO_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
YES_NO_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def yes_no_header(instruction: str, query: str) -> str:
    """The start of a Qwen3-Reranker user turn; the document follows it directly."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: "


@dataclass(frozen=True)
class Pair:
    """One tokenised (query, document): the full sequence and where its two parts lie in it."""

    ids: list[int]
    types: list[int] | None
    query: tuple[int, int]  # [start, end) of the query tokens (may be cut second)
    doc: tuple[int, int]  # [start, end) of the document tokens (cut first)


@dataclass(frozen=True)
class EncodedPairs:
    seqs: list[list[int]]
    splits: list[int]  # per pair, how many leading tokens have token type 0 (the rest have 1)


def _cut(seq: list[int], start: int, stop: int) -> list[int]:
    return seq[:start] + seq[stop:]


def _span(sequence_ids: list[int | None], which: int) -> tuple[int, int]:
    positions = [i for i, s in enumerate(sequence_ids) if s == which]
    return (positions[0], positions[-1] + 1) if positions else (0, 0)


def _too_many_tokens(what: str, limit: int) -> InvalidRequest:
    return InvalidRequest(f"{what} has more than {limit} tokens (LLM_RERANK_MAX_TOKENS_PER_DOC)",
                          param=what.split("[")[0], code="too_many_tokens")


class RerankInputs:
    """The cheap half of a reranker: tokenizer, prompt format and limits (no weights)."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        AutoTokenizer = hf_import("AutoTokenizer")

        self.settings = settings
        self.config: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.options = read_options(folder)
        archs = [a for a in self.config.get("architectures") or [] if isinstance(a, str)]
        cross = any(a.endswith("ForSequenceClassification") for a in archs)
        self.causal = not cross and any(a.endswith(CAUSAL_LM_SUFFIXES) for a in archs)
        if not cross and not self.causal:
            raise InvalidRequest(f"cannot rerank with architectures {archs}", code="unsupported_model")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if not self.tokenizer.is_fast:
            raise InvalidRequest("rerankers need a fast (tokenizers) tokenizer", code="unsupported_model")
        self.max_length = smallest_limit(self.options.get("max_length"), self.config.get("max_position_embeddings"),
                                         getattr(self.tokenizer, "model_max_length", None))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.uses_type_ids = not self.causal and "token_type_ids" in self.tokenizer.model_input_names
        self.instruction = str(self.options.get("instruction") or DEFAULT_INSTRUCTION)
        self.prefix = self._plain_ids(YES_NO_PREFIX) if self.causal else []
        self.suffix = self._plain_ids(YES_NO_SUFFIX) if self.causal else []

    def _plain_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, query: str, documents: list[str], *, instruction: str | None = None, truncate: bool = True,
               max_tokens_per_doc: int | None = None) -> EncodedPairs:
        """Token ids per (query, document) pair, fitted to the model's window (or a 400)."""
        limit = self.settings.rerank_max_tokens_per_doc
        self._check_size(query, documents, limit)
        if self.causal:
            pairs = self._yes_no_pairs(query, documents, instruction or self.instruction)
        else:
            pairs = self._cross_pairs(query, documents)
        long = next((i for i, p in enumerate(pairs) if p.doc[1] - p.doc[0] > limit), None)
        if long is not None:
            raise _too_many_tokens(f"documents[{long}]", limit)
        if not truncate:
            over = next((i for i, p in enumerate(pairs) if len(p.ids) > self.max_length), None)
            if over is not None:
                raise InvalidRequest(
                    f"the pair with documents[{over}] has {len(pairs[over].ids)} tokens; this model takes at "
                    f"most {self.max_length}", param="documents", code="context_length_exceeded")
        doc_cap = max_tokens_per_doc or limit
        seqs: list[list[int]] = []
        splits: list[int] = []
        for pair in pairs:
            ids, split = self._fit(pair, doc_cap)
            seqs.append(ids)
            splits.append(split)
        return EncodedPairs(seqs, splits)

    def _check_size(self, query: str, documents: list[str], limit: int) -> None:
        """Refuse absurd texts before tokenising them (at most CHARS_PER_TOKEN_CAP characters a token)."""
        cap = limit * CHARS_PER_TOKEN_CAP
        long = next((i for i, d in enumerate(documents) if len(d) > cap), None)
        if long is not None:
            raise _too_many_tokens(f"documents[{long}]", limit)
        if len(query) > cap or len(self.tokenizer(query, add_special_tokens=False)["input_ids"]) > limit:
            raise _too_many_tokens("query", limit)

    def _cross_pairs(self, query: str, documents: list[str]) -> list[Pair]:
        encoded = self.tokenizer([query] * len(documents), documents, add_special_tokens=True)
        pairs = []
        for enc in encoded.encodings:
            seq_ids = enc.sequence_ids
            types = list(enc.type_ids) if self.uses_type_ids else None
            pairs.append(Pair(list(enc.ids), types, _span(seq_ids, 0), _span(seq_ids, 1)))
        return pairs

    def _yes_no_pairs(self, query: str, documents: list[str], instruction: str) -> list[Pair]:
        header = yes_no_header(instruction, query)
        encoded = self.tokenizer([header + d for d in documents], add_special_tokens=False,
                                 return_offsets_mapping=True)
        start = len(self.prefix)
        pairs = []
        for enc in encoded.encodings:
            content = list(enc.ids)
            doc0 = next((i for i, (_, end) in enumerate(enc.offsets) if end > len(header)), len(content))
            ids = self.prefix + content + self.suffix
            pairs.append(Pair(ids, None, (start, start + doc0), (start + doc0, start + len(content))))
        return pairs

    def _fit(self, pair: Pair, doc_cap: int) -> tuple[list[int], int]:
        """Cut the document's end (then the query's end) until the pair fits; (ids, type-0 length)."""
        (q0, q1), (d0, d1) = pair.query, pair.doc
        drop_doc = max(0, d1 - d0 - doc_cap)
        drop_doc += max(0, min(len(pair.ids) - drop_doc - self.max_length, d1 - d0 - drop_doc))
        drop_query = max(0, min(len(pair.ids) - drop_doc - self.max_length, q1 - q0))
        ids = _cut(_cut(pair.ids, d1 - drop_doc, d1), q1 - drop_query, q1)
        if len(ids) > self.max_length:
            raise InvalidRequest(f"this model's window ({self.max_length} tokens) is too small for its prompt",
                                 code="context_length_exceeded")
        if pair.types is None:
            return ids, len(ids)
        types = _cut(_cut(pair.types, d1 - drop_doc, d1), q1 - drop_query, q1)
        return ids, types.index(1) if 1 in types else len(types)


def _activation(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """CrossEncoder's activation for a one-label model: the saved one (a torch class) or sigmoid."""
    st_config = getattr(config, "sentence_transformers", None)
    path = st_config.get("activation_fn") if isinstance(st_config, dict) else None
    path = path or getattr(config, "sbert_ce_default_activation_function", None)
    if isinstance(path, str) and path.startswith("torch."):
        module, _, name = path.rpartition(".")
        fn: Callable[[torch.Tensor], torch.Tensor] = getattr(importlib.import_module(module), name)()
        return fn
    return torch.sigmoid


def _label_index(config: Any, option: Any) -> int:
    """The label whose probability is the score of a several-label model: `options.label` or the last."""
    num_labels = int(config.num_labels)
    if option is None:
        return num_labels - 1
    by_name = {str(v): int(k) for k, v in (config.id2label or {}).items()}
    index = by_name.get(str(option), option)
    if not isinstance(index, int) or not 0 <= index < num_labels:
        raise InvalidRequest(f"options.label {option!r} is not one of the model's labels", code="unsupported_model")
    return index


class RerankEngine(ParksModule):
    model_type = ModelType.RERANKER

    def load(self) -> None:
        self.inputs = RerankInputs(Path(self.info.path), self.settings)
        self.device = pick_device(self.settings)
        kwargs: dict[str, Any] = {"pretrained_model_name_or_path": self.info.path, "local_files_only": True,
                                  "dtype": pick_dtype(self.device, self.info.dtype), "trust_remote_code": False}
        if self.inputs.causal:
            self._load_yes_no(kwargs)
        else:
            AutoModelForSequenceClassification = hf_import("AutoModelForSequenceClassification")

            self.model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, self.device,
                                         self.placement, **kwargs)
            self.label = _label_index(self.model.config, self.inputs.options.get("label"))
            self.activation = _activation(self.model.config)
        self.fused_norms = norms.fuse(self.model)
        self.fast_rotary = rotary.fuse(self.model)
        self.packed = self._try_packing()

    @torch.inference_mode()
    def _try_packing(self) -> bool:
        """Packed batches (worker/engines/packing.py) where they are on and score as padded batches do."""
        self.offset = packing.position_offset(self.model)
        vocab = int(self.model.config.vocab_size)
        probe = [([int(t) % vocab for t in range(7, 7 + n)], split) for n, split in ((5, 2), (2, 1), (9, 4))]

        def same() -> bool:
            return packing.same_scores(self._score_packed(probe), self._score_padded(probe), self.model.dtype)

        # Only when asked: on rerank pairs (a query and a document each, lengths less spread than embedding
        # inputs) packed batches measured slower than padded ones on a CPU (README, LLM_PACKED_BATCHES).
        return packing.try_enable(self.model, self.info.id, self.settings.packed_batches or False, self.device, same)

    def _load_yes_no(self, kwargs: dict[str, Any]) -> None:
        AutoModelForCausalLM = hf_import("AutoModelForCausalLM")

        self.model = from_pretrained(AutoModelForCausalLM.from_pretrained, self.device, self.placement, **kwargs)
        tokenizer = self.inputs.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(t) for t in ("no", "yes")]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise InvalidRequest("the tokenizer has no single 'yes' and 'no' tokens", code="unsupported_model")
        head = self.model.get_output_embeddings()
        self.yes_no_weight = head.weight[ids].detach().to(self.device)
        bias = getattr(head, "bias", None)
        self.yes_no_bias = None if bias is None else bias[ids].detach().to(self.device)

    def park(self) -> bool:
        if not super().park():
            return False
        if self.inputs.causal:
            self.yes_no_weight = self.yes_no_weight.cpu()
            self.yes_no_bias = None if self.yes_no_bias is None else self.yes_no_bias.cpu()
        return True

    def wake(self) -> None:
        super().wake()
        if self.inputs.causal:
            self.yes_no_weight = self.yes_no_weight.to(self.device)
            self.yes_no_bias = None if self.yes_no_bias is None else self.yes_no_bias.to(self.device)

    @torch.inference_mode()
    def score(self, batch: list[tuple[list[int], int]]) -> np.ndarray:
        """float32 [pairs, 2]: per (token ids, type-0 length) pair, its score and its raw score."""
        return (self._score_packed(batch) if self.packed else self._score_padded(batch)).cpu().numpy()

    def _score_padded(self, batch: list[tuple[list[int], int]]) -> torch.Tensor:
        ids, mask = pad_batch([seq for seq, _ in batch], self.inputs.pad_id, self.device)
        if self.inputs.causal:
            return self._yes_no_scores(ids, mask)
        return self._cross_scores(ids, mask, [split for _, split in batch])

    def _score_packed(self, batch: list[tuple[list[int], int]]) -> torch.Tensor:
        """The pairs end to end in one row: the yes/no logits at each one's last token, or the classifier on each
        one's first token (where the pooler or the classification head reads it)."""
        ids, positions = packing.packed_inputs([seq for seq, _ in batch], self.device, self.offset)
        lengths = [len(seq) for seq, _ in batch]
        extra: dict[str, Any] = {"use_cache": False} if self.inputs.causal else {}
        if self.inputs.uses_type_ids:
            extra["token_type_ids"] = packing.packed_type_ids(lengths, [split for _, split in batch], self.device)
        with packing.segments(lengths):
            hidden = self.model.base_model(input_ids=ids, position_ids=positions, **extra).last_hidden_state[0]
        starts, stops = packing.bounds(lengths, self.device)
        if self.inputs.causal:
            return self._yes_no(hidden[stops - 1])
        first = hidden[starts][:, None]  # [pairs, 1, hidden]
        pooler = getattr(self.model.base_model, "pooler", None)
        logits = self.model.classifier(first if pooler is None else pooler(first))
        return self._cross(logits.float())

    def _cross_scores(self, ids: torch.Tensor, mask: torch.Tensor, splits: list[int]) -> torch.Tensor:
        extra: dict[str, torch.Tensor] = {}
        if self.inputs.uses_type_ids:
            positions = torch.arange(ids.shape[1], device=self.device)
            starts = torch.tensor(splits, device=self.device).unsqueeze(1)
            extra["token_type_ids"] = ((positions >= starts) & (mask > 0)).long()
        return self._cross(self.model(input_ids=ids, attention_mask=mask, **extra).logits.float())

    def _cross(self, logits: torch.Tensor) -> torch.Tensor:
        raw = logits[:, self.label]
        if logits.shape[1] == 1:
            return torch.stack([self.activation(raw), raw], dim=1)
        return torch.stack([torch.softmax(logits, dim=1)[:, self.label], raw], dim=1)

    def _yes_no_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self._yes_no(hidden[torch.arange(ids.shape[0], device=self.device), mask.sum(dim=1) - 1])

    def _yes_no(self, last: torch.Tensor) -> torch.Tensor:
        no_yes = torch.nn.functional.linear(last, self.yes_no_weight, self.yes_no_bias).float()
        raw = no_yes[:, 1] - no_yes[:, 0]
        return torch.stack([torch.softmax(no_yes, dim=1)[:, 1], raw], dim=1)
