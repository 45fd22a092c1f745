"""The chat engine boundary: engine-neutral generation parameters and streamed choice deltas."""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from common.chat_template import chat_features, template_kwargs
from common.discovery import read_options
from common.errors import InvalidRequest
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import Engine, hf_import


@dataclass(frozen=True)
class GenerationParams:
    """What to generate, with vLLM's meanings (`SamplingParams`); each engine maps what it can."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: off; k >= 0: the sampled token plus k alternatives
    top_k: int = 0  # 0 (or -1): every token
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] = field(default_factory=dict)
    # A grammar the output must follow, as vLLM's StructuredOutputsParams fields: {"json": schema},
    # {"json_object": True} or {"structural_tag": "..."} (tool calls).
    structured: dict[str, Any] | None = None
    reasoning_ended: bool | None = None  # False: the grammar applies only once the think block has ended

    @classmethod
    def from_wire(cls, params: dict[str, Any], max_tokens: int) -> GenerationParams:
        json_mode = params.get("json")
        structured = None
        if json_mode is not None:
            schema = json_mode.get("schema")
            structured = {"json": schema} if schema is not None else {"json_object": True}
        return cls(max_tokens=max_tokens, temperature=float(params.get("temperature", 1.0)),
                   top_p=float(params.get("top_p", 1.0)), stop=tuple(params.get("stop") or ()),
                   seed=params.get("seed"), presence_penalty=float(params.get("presence_penalty", 0.0)),
                   frequency_penalty=float(params.get("frequency_penalty", 0.0)),
                   logprobs=params.get("logprobs"), top_k=int(params.get("top_k") or 0),
                   min_p=float(params.get("min_p") or 0.0),
                   repetition_penalty=float(params.get("repetition_penalty") or 1.0),
                   min_tokens=int(params.get("min_tokens") or 0), ignore_eos=bool(params.get("ignore_eos")),
                   stop_token_ids=tuple(int(t) for t in params.get("stop_token_ids") or ()),
                   skip_special_tokens=bool(params.get("skip_special_tokens", True)),
                   logit_bias={int(k): float(v) for k, v in (params.get("logit_bias") or {}).items()},
                   structured=structured)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "top": [list(t) for t in self.top]}


@dataclass
class Delta:
    """New output of one sequence: text, token count (and ids), the finish reason once it ends; once read by
    the model's parsers (worker/engines/chat_output.py) the text is the content only, and the reasoning and
    tool-call fragments come apart."""

    text: str
    tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    stop_reason: str | int | None = None  # vLLM's: the stop string or stop token id that ended it (None: EOS)

    def wire(self, index: int) -> dict[str, Any]:
        logprobs = None if self.logprobs is None else [lp.wire() for lp in self.logprobs]
        out = {"index": index, "text": self.text, "logprobs": logprobs, "finish_reason": self.finish_reason}
        if self.reasoning:
            out["reasoning"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.stop_reason is not None:
            out["stop_reason"] = self.stop_reason
        return out


class ChatInputs:
    """The cheap half of a chat model: tokenizer, chat template (and what it supports), output parsers and
    context length."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        AutoTokenizer = hf_import("AutoTokenizer")

        with (folder / "config.json").open(encoding="utf-8") as fh:
            config = json.load(fh)
        self.model = folder.name
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.vocab_size = int(config.get("vocab_size") or len(self.tokenizer))
        window = config.get("max_position_embeddings") or config.get("n_positions") or 2048
        self.context_len = min(int(window), settings.vllm_max_model_len or int(window))
        self.features = chat_features(folder, config, read_options(folder))
        from worker.engines.chat_output import ModelParsers  # it builds on this module's types

        self.parsers = ModelParsers(self.model, self.features, self.tokenizer)

    def template_kwargs(self, chat: dict[str, Any]) -> dict[str, Any]:
        return template_kwargs(self.model, self.features, chat.get("template_kwargs"), chat.get("reasoning_effort"))

    def render(self, messages: list[dict[str, Any]] | None, prompt: str | list[int] | None,
               tools: list[dict[str, Any]] | None = None, kwargs: dict[str, Any] | None = None) -> list[int]:
        """Prompt token ids: chat messages (and tools) through the model's chat template, or a raw prompt."""
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise InvalidRequest("this model has no chat template; use /v1/completions",
                                     param="messages", code="no_chat_template")
            try:
                ids: Any = self.tokenizer.apply_chat_template(
                    messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False,
                    **(kwargs or {}))
            except TemplateError as exc:  # the template's own raise_exception(), or a template bug
                raise InvalidRequest(f"the model's chat template refused the messages: {exc}", param="messages",
                                     code="chat_template_error") from exc
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


def check_schemas(params: GenerationParams, tools: list[dict[str, Any]] | None) -> None:
    """The response format's schema and every tool's parameters must be schemas the grammar backend (xgrammar,
    vLLM's structured outputs) compiles: refused at admission with its message (400), not as an engine failure
    mid-request."""
    schema = (params.structured or {}).get("json")
    if isinstance(schema, dict):
        _compile(schema, "response_format", "response_format.json_schema.schema", "invalid_json_schema")
    for i, tool in enumerate(tools or ()):
        parameters = tool.get("function", {}).get("parameters")
        if parameters is not None:
            where = f"tools.{i}.function.parameters"
            _compile(parameters, where, where, "invalid_tool_schema")


def _compile(schema: dict[str, Any], param: str, name: str, code: str) -> None:
    try:
        import xgrammar
    except ImportError:  # no vLLM here: nothing constrains output with it
        return
    try:
        xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", lines[0])  # xgrammar's "[time] file.cc:83: " prefix
        raise InvalidRequest(f"{name} is not a schema the grammar backend accepts: {reason}", param=param,
                             code=code) from exc


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
