"""A chat model's output read by vLLM's own parsers: reasoning, content and tool calls, on either engine.

Our code only chooses and drives them. Per model, `ModelParsers` composes the tool-call and reasoning parsers
chosen for its template (common/chat_template.py) into vLLM's `Parser` class. Per request, `plan_output`
builds vLLM's own request object and lets the parser adjust it, exactly as vLLM serve does: the grammar
that constrains tool calls (`required`, a named function, and every call's arguments pinned to its schema)
and whether special tokens stay in the text. Per sequence, `OutputReader` turns the engine's deltas into
content, reasoning and tool-call fragments: incrementally when the caller streams, else once at the end
(vLLM's non-streaming path, which reads a whole output more reliably).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from common.chat_template import ChatFeatures
from common.errors import InvalidRequest
from worker.engines.chat_base import Delta, GenerationParams

log = logging.getLogger(__name__)

TOOL_STRICT_LEVEL = "parameter"  # every call's envelope and arguments follow the tools' schemas
MAX_JSON_WHITESPACE = 1  # consecutive whitespace characters inside a call's JSON
STRUCTURED_FIELDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ModelParsers:
    """vLLM's parser class for one model, or why there is none."""

    def __init__(self, model: str, features: ChatFeatures | None, tokenizer: Any) -> None:
        self.model, self.features, self.tokenizer = model, features or ChatFeatures(), tokenizer
        self.parser_cls: Any = None
        self.error: str | None = None
        tool, reasoning = self.features.tool_parser, self.features.reasoning_parser
        if not tool and not reasoning:
            return
        try:
            from vllm.parser import ParserManager
            from vllm.tokenizers.hf import get_cached_tokenizer

            self.tokenizer = get_cached_tokenizer(tokenizer)
            self.parser_cls = ParserManager.get_parser(
                tool_parser_name=tool, reasoning_parser_name=reasoning, enable_auto_tools=True,
                tool_strict_level=TOOL_STRICT_LEVEL, tokenizer=self.tokenizer)
        except ImportError:
            self.error = "vLLM (whose parsers read tool calls and reasoning) is not installed in this worker"
        except Exception as exc:  # an unknown parser name, or a tokenizer without the parser's markers
            self.error = f"{type(exc).__name__}: {exc}"
        if self.error:
            log.warning("%s: output parsers (tool %s, reasoning %s) unavailable: %s", model, tool, reasoning,
                        self.error)

    def check(self, chat: dict[str, Any]) -> None:
        """A 400 when the request needs tools this model cannot take or read."""
        if not chat.get("tools") or chat.get("tool_choice") == "none":
            return
        if not self.features.tools:
            raise InvalidRequest(f"The model '{self.model}' has no tool support in its chat template; 'tools' "
                                 "cannot be used", param="tools", code="tools_unsupported")
        if self.features.tool_parser is None or self.error:
            reason = self.error or "no tool-call parser is known for its chat template"
            raise InvalidRequest(f"Tool calls of '{self.model}' cannot be read: {reason}; name one of vLLM's "
                                 "parsers as \"tool_parser\" in the folder's llm-interface.json options",
                                 param="tools", code="no_tool_parser")

    def needed(self, chat: dict[str, Any]) -> bool:
        """Whether this request's output goes through the parsers at all."""
        calls = bool(chat.get("tools")) and chat.get("tool_choice") != "none"
        return self.parser_cls is not None and (calls or self.features.reasoning_parser is not None)


@dataclass
class OutputPlan:
    """vLLM's adjusted request and the parser class, shared by a request's sequences."""

    parsers: ModelParsers
    request: Any  # vllm ChatCompletionRequest
    kwargs: dict[str, Any]
    prompt: list[int]
    stream: bool

    def reader(self) -> OutputReader:
        parser = self.parsers.parser_cls(self.parsers.tokenizer, self.request.tools,
                                         chat_template_kwargs=self.kwargs)
        return OutputReader(parser, self.request, self.prompt, self.stream)


def plan_output(parsers: ModelParsers, chat: dict[str, Any], kwargs: dict[str, Any], prompt: list[int],
                params: GenerationParams) -> tuple[OutputPlan | None, GenerationParams]:
    """The request as vLLM serve would run it: its parser's grammar and special-token setting in the params."""
    if not parsers.needed(chat):
        return None, params
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    fields: dict[str, Any] = {"model": parsers.model, "messages": [], "include_reasoning":
                              chat.get("include_reasoning", True), "chat_template_kwargs": kwargs}
    if chat.get("tools"):
        fields.update(tools=chat["tools"], tool_choice=chat.get("tool_choice") or "auto")
    if chat.get("parallel_tool_calls") is not None:
        fields["parallel_tool_calls"] = chat["parallel_tool_calls"]
    if params.structured is not None:
        fields["structured_outputs"] = params.structured
    request = ChatCompletionRequest(**fields)
    parser = parsers.parser_cls(parsers.tokenizer, request.tools, chat_template_kwargs=kwargs)
    request = parser.adjust_request(request)
    sampling = request.to_sampling_params(params.max_tokens, {})
    structured = None if sampling.structured_outputs is None else {
        k: v for k in STRUCTURED_FIELDS if (v := getattr(sampling.structured_outputs, k)) is not None}
    if structured and "structural_tag" in structured:
        structured["structural_tag"] = limit_whitespace(structured["structural_tag"])
    adjusted = replace(
        params, skip_special_tokens=params.skip_special_tokens and bool(sampling.skip_special_tokens),
        structured=structured,
        reasoning_ended=request.resolve_reasoning_ended(parser, prompt))
    return OutputPlan(parsers, request, kwargs, prompt, bool(chat.get("stream"))), adjusted


def limit_whitespace(tag: str) -> str:
    """A tool-call grammar (structural tag) whose JSON allows single spaces only, as the engine's JSON modes do
    (`disable_any_whitespace`): structural tags ignore that setting, and small models then pad arguments with
    whitespace until max_tokens."""
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and node.get("max_whitespace_cnt") is None:
                node["max_whitespace_cnt"] = MAX_JSON_WHITESPACE
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    data = json.loads(tag)
    walk(data)
    return json.dumps(data)


class OutputReader:
    """One sequence's deltas, read into content, reasoning and tool calls (ids in OpenAI's `call_` form)."""

    def __init__(self, parser: Any, request: Any, prompt: list[int], stream: bool) -> None:
        self.parser, self.request, self.prompt, self.stream = parser, request, prompt, stream
        self.named = not isinstance(request.tool_choice, str | None)
        self.called = False
        self.ids: dict[int, str] = {}  # call index -> our id
        self.text: list[str] = []
        self.token_ids: list[int] = []

    def feed(self, delta: Delta) -> Delta:
        finished = delta.finish_reason is not None
        if self.stream:
            message = self.parser.parse_delta(delta.text, delta.token_ids, self.request, self.prompt,
                                              finished=finished)
            out = self._from_message(delta, message)
        else:
            self.text.append(delta.text)
            self.token_ids += delta.token_ids
            out = Delta("", delta.tokens, delta.logprobs, delta.finish_reason, stop_reason=delta.stop_reason)
            if finished:
                out = self._whole(out)
        if finished and self.called and not self.named and delta.finish_reason == "stop":
            out.finish_reason = "tool_calls"  # OpenAI's: a named choice still finishes with "stop"
        return out

    def _from_message(self, delta: Delta, message: Any) -> Delta:
        out = Delta("", delta.tokens, delta.logprobs, delta.finish_reason, stop_reason=delta.stop_reason)
        if message is None:
            return out
        out.text, out.reasoning = message.content or "", message.reasoning or None
        calls = [self._call(c.index, c.id, c.function.name if c.function else None,
                            c.function.arguments if c.function else None) for c in message.tool_calls or ()]
        out.tool_calls = calls or None
        return out

    def _whole(self, out: Delta) -> Delta:
        reasoning, content, calls = self.parser.parse("".join(self.text), self.request, enable_auto_tools=True,
                                                      model_output_token_ids=self.token_ids)
        out.text, out.reasoning = content or "", (reasoning or None) if self.request.include_reasoning else None
        out.tool_calls = [self._call(i, "new", c.name, c.arguments) for i, c in enumerate(calls or ())] or None
        return out

    def _call(self, index: int, vllm_id: str | None, name: str | None, arguments: str | None) -> dict[str, Any]:
        call: dict[str, Any] = {"index": index, "function": {}}
        if vllm_id is not None and index not in self.ids:
            self.ids[index] = new_call_id()
            self.called = True
            call.update(id=self.ids[index], type="function")
        if name is not None:
            call["function"]["name"] = name
        if arguments is not None:
            call["function"]["arguments"] = arguments
        return call

