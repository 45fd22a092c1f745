"""The chat engine boundary: engine-neutral generation parameters and streamed choice deltas."""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import InvalidRequest
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import Engine, hf_import


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: off; k >= 0: the sampled token plus k alternatives
    json: dict[str, Any] | None = None  # {"type": "object"} or {"type": "schema", "schema": {...}}

    @classmethod
    def from_wire(cls, params: dict[str, Any], max_tokens: int) -> GenerationParams:
        return cls(max_tokens=max_tokens, temperature=float(params.get("temperature", 1.0)),
                   top_p=float(params.get("top_p", 1.0)), stop=tuple(params.get("stop") or ()),
                   seed=params.get("seed"), presence_penalty=float(params.get("presence_penalty", 0.0)),
                   frequency_penalty=float(params.get("frequency_penalty", 0.0)),
                   logprobs=params.get("logprobs"), json=params.get("json"))


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "top": [list(t) for t in self.top]}


@dataclass
class Delta:
    """New output of one sequence: text, token count, and the finish reason once it ends."""

    text: str
    tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


class ChatInputs:
    """The cheap half of a chat model: tokenizer, chat template and context length."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        AutoTokenizer = hf_import("AutoTokenizer")

        with (folder / "config.json").open(encoding="utf-8") as fh:
            config = json.load(fh)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.vocab_size = int(config.get("vocab_size") or len(self.tokenizer))
        window = config.get("max_position_embeddings") or config.get("n_positions") or 2048
        self.context_len = min(int(window), settings.vllm_max_model_len or int(window))

    def render(self, messages: list[dict[str, str]] | None, prompt: str | list[int] | None) -> list[int]:
        """Prompt token ids: chat messages through the model's chat template, or a raw prompt."""
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise InvalidRequest("this model has no chat template; use /v1/completions",
                                     param="messages", code="no_chat_template")
            ids: Any = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
            return [int(t) for t in ids]
        if isinstance(prompt, list):
            bad = next((t for t in prompt if not 0 <= int(t) < self.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(f"prompt holds token id {bad}; this model's vocabulary is [0, {self.vocab_size})",
                                     param="prompt", code="invalid_token_id")
            return [int(t) for t in prompt]
        return [int(t) for t in self.tokenizer(prompt or "")["input_ids"]]

    def budget(self, prompt_len: int, requested: int | None) -> int:
        """max_tokens for this prompt; a 400 naming both counts when it cannot fit the window."""
        room = self.context_len - prompt_len
        if room <= 0 or (requested is not None and requested > room):
            asked = f" and {requested} for the completion" if requested is not None else ""
            raise InvalidRequest(
                f"This model's maximum context length is {self.context_len} tokens. However, you requested "
                f"{prompt_len + (requested or 0)} tokens ({prompt_len} in the messages{asked}). "
                "Please reduce the length of the messages or completion.",
                param="messages", code="context_length_exceeded")
        return requested if requested is not None else room


def check_json_schema(spec: dict[str, Any] | None) -> None:
    """A `json_schema` response format must be one the grammar backend (xgrammar, vLLM's structured outputs)
    compiles: refuse it at admission with its message (400), not as an engine failure mid-request."""
    schema = (spec or {}).get("schema")
    if schema is None:
        return
    try:
        import xgrammar
    except ImportError:  # no vLLM here: the transformers engine refuses response_format anyway
        return
    try:
        xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", lines[0])  # xgrammar's "[time] file.cc:83: " prefix
        raise InvalidRequest(f"response_format.json_schema.schema is not a schema the grammar backend accepts: "
                             f"{reason}", param="response_format", code="invalid_json_schema") from exc


class ChatEngine(Engine):
    model_type = ModelType.CHAT

    @abstractmethod
    def generate(self, request_id: str, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        """Stream one sequence; cancelling the consumer aborts it."""

    @abstractmethod
    def running(self) -> int:
        """Sequences in flight in the engine."""

    def check(self, params: GenerationParams) -> None:
        """Raise a 400 naming any parameter this engine cannot honour."""
