"""`POST /v1/messages`, as Anthropic defines it: the request, and how it becomes a chat completion request (content
blocks as chat messages: `tool_use` as tool calls, `tool_result` as tool messages, `thinking` as reasoning)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.schemas.base import INT32_MAX, ApiRequest
from api.schemas.chat import ChatCompletionRequest, chat_request
from api.schemas.tools import FUNCTION_NAME
from common.discovery import ModelInfo
from common.errors import InvalidRequest

# Accepted and without effect here: Anthropic's caching, routing, billing and tracing fields.
IGNORED = frozenset({"metadata", "service_tier", "cache_control", "diagnostics", "inference_geo", "speed",
                     "user_profile_id", "workspace_id"})
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
THINKING_SWITCHES = ("reasoning_effort", "enable_thinking", "thinking")


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr = Field(pattern=FUNCTION_NAME)
    description: StrictStr | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(BaseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class Thinking(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: StrictInt | None = None


class OutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: StrictStr | list[dict[str, Any]]


class MessagesRequest(ApiRequest):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    max_tokens: StrictInt = Field(ge=1, le=INT32_MAX)
    messages: list[Message] = Field(min_length=1)
    system: StrictStr | list[dict[str, Any]] | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=0, le=INT32_MAX)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    stream: StrictBool = False

    def check(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if value is not None and name not in IGNORED:
                raise InvalidRequest(f"{name}: Extra inputs are not permitted", param=name,
                                     code="unsupported_parameter")
        for i, tool in enumerate(self.tools or []):
            if tool.model_extra:
                extra = next(iter(tool.model_extra))
                raise InvalidRequest(f"tools.{i}.{extra}: server tools are not supported (custom tools only)",
                                     param=f"tools.{i}.{extra}", code="unsupported_tool")
        if self.tool_choice and self.tool_choice.type == "tool" and not self.tool_choice.name:
            raise InvalidRequest("tool_choice of type 'tool' needs a 'name'", param="tool_choice.name")

    def to_chat(self, info: ModelInfo) -> ChatCompletionRequest:
        """The same generation as a chat completion request for `info`'s model."""
        messages = ([{"role": "system", "content": _text(self.system, "system")}] if self.system else [])
        for i, message in enumerate(self.messages):
            messages += _messages(message, f"messages.{i}")
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                "stop": self.stop_sequences or None, "temperature": self.temperature,
                                "top_p": self.top_p, "top_k": self.top_k, "stream": self.stream}
        if self.tools:
            body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                                "parameters": t.input_schema}} for t in self.tools]
        body.update(self._tool_choice())
        body["reasoning_effort"] = self._effort(info)
        fmt = self.output_config.format if self.output_config else None
        if fmt is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.schema_}}
        return chat_request({k: v for k, v in body.items() if v is not None})

    def _effort(self, info: ModelInfo) -> str | None:
        """`thinking` and `output_config.effort` on the template's reasoning switch, where it has one (a model
        without one does not think, whatever is asked)."""
        switches = info.chat.switches if info.chat else ()
        if not any(s in switches for s in THINKING_SWITCHES):
            return None
        if self.thinking is not None and self.thinking.type == "disabled":
            return "none"
        effort = self.output_config.effort if self.output_config else None
        if effort is not None:
            return EFFORTS[effort]
        return "medium" if self.thinking is not None else None

    def _tool_choice(self) -> dict[str, Any]:
        choice = self.tool_choice
        if choice is None:
            return {}
        named = {"type": "function", "function": {"name": choice.name}}
        out: dict[str, Any] = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}.get(choice.type,
                                                                                                     named)}
        if choice.disable_parallel_tool_use is not None:
            out["parallel_tool_calls"] = not choice.disable_parallel_tool_use
        return out


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, block in enumerate(content):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"{where}.{j}: blocks of type '{block.get('type')}' are not supported here (text)",
                                 param=f"{where}.{j}.type", code="unsupported_content")
        texts.append(block["text"])
    return "".join(texts)


def _messages(message: Message, where: str) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results first (one tool message each), then the text,
    the reasoning and the tool calls of the turn."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    results: list[dict[str, Any]] = []
    texts, reasoning, calls = [], [], []
    for j, block in enumerate(message.content):
        kind, at = block.get("type"), f"{where}.content.{j}"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and message.role == "assistant" and isinstance(block.get("thinking"), str):
            reasoning.append(block["thinking"])
        elif kind == "redacted_thinking" and message.role == "assistant":
            continue
        elif kind == "tool_use" and message.role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise InvalidRequest(f"{at}: a tool_use block needs an 'id' and a 'name'", param=at)
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": arguments}})
        elif kind == "tool_result" and message.role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequest(f"{at}: a tool_result block needs its 'tool_use_id'", param=f"{at}.tool_use_id")
            content = _text(block.get("content"), f"{at}.content")
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": f"Error: {content}" if block.get("is_error") else content})
        else:
            raise InvalidRequest(f"{at}: {message.role} blocks of type '{kind}' are not supported", param=f"{at}.type",
                                 code="unsupported_content")
    out = results
    if texts or calls or reasoning or not results:
        turn: dict[str, Any] = {"role": message.role, "content": "".join(texts) if texts or not calls else None}
        if calls:
            turn["tool_calls"] = calls
        if reasoning:
            turn["reasoning_content"] = "".join(reasoning)
        out = [*out, turn]
    return out
