"""`POST /v1/responses`, as OpenAI defines it: the request, and how it becomes a chat completion request (its
input items turned into chat messages, after the stored conversation of `previous_response_id`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.schemas.base import INT32_MAX, ApiRequest
from api.schemas.chat import ChatCompletionRequest, ReasoningEffort, chat_request
from api.schemas.tools import FUNCTION_NAME
from common.errors import InvalidRequest

# Accepted and without effect here: OpenAI's storage, billing, caching and routing hints.
IGNORED = frozenset({"metadata", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
                     "service_tier", "stream_options", "truncation", "include", "max_tool_calls"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: StrictStr = Field(pattern=FUNCTION_NAME)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionChoice(BaseModel):
    type: Literal["function"]
    name: StrictStr


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat = TextFormat()
    verbosity: StrictStr | None = None


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: ReasoningEffort | None = None
    summary: StrictStr | None = None


class ResponsesRequest(ApiRequest):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    stream: StrictBool = False
    store: StrictBool = True
    previous_response_id: StrictStr | None = None
    background: StrictBool = False

    def check(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if value is not None and name not in IGNORED:
                raise InvalidRequest(f"Unsupported parameter: '{name}'", param=name, code="unsupported_parameter")
        if self.background:
            raise InvalidRequest("background responses are not supported; leave 'background' false",
                                 param="background", code="unsupported_parameter")
        fmt = self.text.format if self.text else None
        if fmt and fmt.type == "json_schema" and not fmt.schema_:
            raise InvalidRequest("a json_schema text format needs a 'schema'", param="text.format.schema")

    def input_items(self) -> list[dict[str, Any]]:
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input

    def conversation(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The chat messages so far: the stored conversation of `previous_response_id`, then this input."""
        return history + input_messages(self.input_items())

    def to_chat(self, conversation: list[dict[str, Any]]) -> ChatCompletionRequest:
        """The same generation as a chat completion request: the instructions, then the conversation."""
        messages = ([{"role": "system", "content": self.instructions}] if self.instructions else []) + conversation
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "stream": self.stream,
            "parallel_tool_calls": self.parallel_tool_calls,
            "reasoning_effort": self.reasoning.effort if self.reasoning else None,
        }
        if self.top_logprobs is not None:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        if self.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                             for t in self.tools]
        choice = self.tool_choice
        body["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                               if isinstance(choice, FunctionChoice) else choice)
        body["response_format"] = self._response_format()
        return chat_request({k: v for k, v in body.items() if v is not None})

    def _response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema_,
                                                       "strict": fmt.strict}}


def _text(content: Any, where: str) -> str:
    """The text of a message's content: a string, or parts of text (images and files are not supported)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text", part.get("refusal")) if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(text, str):
            raise InvalidRequest(f"{where}.content[{j}]: parts of type '{kind}' are not supported (text only)",
                                 param=f"{where}.content.{j}", code="unsupported_content")
        texts.append(text)
    return "".join(texts)


def _field(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} needs a string '{name}'", param=f"{where}.{name}")
    return value


def input_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items as chat messages: messages as they are, consecutive function calls as one assistant
    message's tool calls, function call outputs as tool messages, reasoning onto the next assistant turn."""
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param=f"input.{i}")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(f"{where}.role must be user, system, developer or assistant",
                                     param=f"input.{i}.role")
            message = {"role": role, "content": _text(item.get("content"), where)}
            if role == "assistant" and reasoning:
                message["reasoning_content"] = "".join(reasoning)
                reasoning = []
            messages.append(message)
        elif kind == "function_call":
            call = {"id": _field(item, "call_id", where), "type": "function",
                    "function": {"name": _field(item, "name", where), "arguments": _field(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or "tool_calls" not in last:
                last = {"role": "assistant", "content": None, "tool_calls": []}
                if reasoning:
                    last["reasoning_content"], reasoning = "".join(reasoning), []
                messages.append(last)
            last["tool_calls"].append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _field(item, "call_id", where),
                             "content": _text(output, where) if output is not None else ""})
        elif kind == "reasoning":
            parts = (item.get("content") or []) + (item.get("summary") or [])
            reasoning += [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)][:1]
        else:
            raise InvalidRequest(f"{where}: input items of type '{kind}' are not supported (message, function_call, "
                                 "function_call_output, reasoning)", param=f"input.{i}.type", code="unsupported_input")
    return messages
