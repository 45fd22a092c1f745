"""`POST /v1/chat/completions`: the request, and its response and stream chunks in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from api.deltas import Choice
from api.schemas.base import INT32_MAX
from api.schemas.sampling import SamplingRequest
from api.schemas.tools import ToolCall, ToolChoice, ToolDefinition, check_model_tools, check_tools
from common.chat_template import template_kwargs
from common.discovery import ModelInfo
from common.errors import InvalidRequest, ValidationFailed

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "conversation", "tools", "documents", "add_generation_prompt",
                                      "tokenize", "return_dict", "continue_final_message", "chat_template"})


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: StrictStr | None = None  # tool turns: the call they answer
    reasoning_content: StrictStr | None = None  # an earlier turn's reasoning, for templates that show it
    reasoning: StrictStr | None = None

    def wire(self, index: int) -> dict[str, Any]:
        """The message as chat templates take it."""
        extra = next((k for k, v in (self.model_extra or {}).items() if v is not None), None)
        if extra is not None:
            raise InvalidRequest(f"messages[{index}]: the field '{extra}' is not supported",
                                 param=f"messages.{index}.{extra}", code="unsupported_parameter")
        if self.tool_calls and self.role != "assistant":
            raise InvalidRequest(f"messages[{index}]: only assistant messages carry 'tool_calls'",
                                 param=f"messages.{index}.tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidRequest(f"messages[{index}]: a tool message needs the 'tool_call_id' it answers",
                                 param=f"messages.{index}.tool_call_id")
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": self.text(index)}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [call.wire() for call in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        reasoning = self.reasoning_content if self.reasoning_content is not None else self.reasoning
        if reasoning is not None and self.role == "assistant":
            out["reasoning_content"] = reasoning
        return out

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(f"messages[{index}]: content parts of type '{part.type}' are not supported",
                                     param=f"messages.{index}.content", code="unsupported_content")
        return "".join(part.text or "" for part in self.content)


def check_tool_messages(messages: list[ChatMessage]) -> None:
    """Every tool message answers a call an earlier assistant message made."""
    called: set[str] = set()
    for i, message in enumerate(messages):
        called |= {call.id for call in message.tool_calls or []}
        if message.role == "tool" and message.tool_call_id not in called:
            raise InvalidRequest(f"messages[{i}]: tool_call_id '{message.tool_call_id}' answers no tool call of an "
                                 "earlier assistant message", param=f"messages.{i}.tool_call_id",
                                 code="unknown_tool_call_id")


class JsonSchemaFormat(BaseModel):
    name: StrictStr = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingRequest):
    id_prefix: ClassVar[str] = "chatcmpl"

    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: ReasoningEffort | None = None
    include_reasoning: StrictBool = True  # vLLM's: false drops the reasoning from the answer

    def check(self, max_n: int) -> None:
        super().check(max_n)
        if not self.messages:
            raise InvalidRequest("'messages' must not be empty", param="messages", code="empty_messages")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        if self.response_format and self.response_format.type == "json_schema" and not (
                self.response_format.json_schema and self.response_format.json_schema.schema_):
            raise InvalidRequest("json_schema response_format needs a 'json_schema.schema'",
                                 param="response_format")
        check_tools(self.tools, self.tool_choice)
        check_tool_messages(self.messages)
        reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(self.chat_template_kwargs or {}))
        if reserved:
            raise InvalidRequest(f"chat_template_kwargs may not set '{reserved[0]}'",
                                 param=f"chat_template_kwargs.{reserved[0]}")

    def check_model(self, info: ModelInfo) -> None:
        """What the model's template must support: tools, a reasoning switch."""
        check_model_tools(info.id, info.chat, self.tools, self.tool_choice)
        template_kwargs(info.id, info.chat, self.chat_template_kwargs, self.reasoning_effort)

    def prompts(self) -> list[dict[str, Any]]:
        return [{"messages": [m.wire(i) for i, m in enumerate(self.messages)]}]

    def chat_options(self) -> dict[str, Any]:
        choice = self.tool_choice
        return {"tools": [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None,
                "tool_choice": choice.model_dump() if isinstance(choice, BaseModel) else choice,
                "parallel_tool_calls": self.parallel_tool_calls, "template_kwargs": self.chat_template_kwargs,
                "reasoning_effort": self.reasoning_effort, "include_reasoning": self.include_reasoning,
                "stream": self.stream}

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def json_mode(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        assert fmt.json_schema is not None
        return {"type": "schema", "schema": fmt.json_schema.schema_}


def _lp_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(items: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if items is None:
        return None
    content = [{**_lp_entry(i["token"], i["logprob"]), "top_logprobs": [_lp_entry(t, lp) for t, lp in i["top"]]}
               for i in items]
    return {"content": content, "refusal": None}


class ChatFormat:
    """OpenAI chat objects for one request."""

    object_name = "chat.completion"

    def __init__(self, request_id: str, model: str, created: int) -> None:
        self.base = {"id": request_id, "created": created, "model": model, "system_fingerprint": None}

    def chunk(self, choice: dict[str, Any], first: bool) -> list[dict[str, Any]]:
        out = []
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if choice["text"] or (first and not choice.get("tool_calls")):
            delta["content"] = choice["text"]
        if choice.get("reasoning"):
            delta["reasoning_content"] = delta["reasoning"] = choice["reasoning"]
        if choice.get("tool_calls"):
            delta["tool_calls"] = [_stream_call(c) for c in choice["tool_calls"]]
        if delta or choice["logprobs"]:
            out.append(self._chunk({"index": choice["index"], "delta": delta,
                                    "logprobs": chat_logprobs(choice["logprobs"]), "finish_reason": None}))
        if choice["finish_reason"] is not None:
            out.append(self._chunk({"index": choice["index"], "delta": {}, "logprobs": None,
                                    "finish_reason": choice["finish_reason"]}))
        return out

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": usage}

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]:
        body = [{"index": c.index, "message": _message(c), "logprobs": chat_logprobs(c.logprobs),
                 "finish_reason": c.finish_reason} for c in choices]
        return {**self.base, "object": self.object_name, "choices": body, "usage": usage}


def _message(choice: Choice) -> dict[str, Any]:
    """The assistant message: content (null when the model only called tools), its tool calls, its reasoning
    (as `reasoning_content` and vLLM's newer `reasoning`)."""
    calls = choice.calls()
    message: dict[str, Any] = {"role": "assistant", "content": choice.text if choice.text or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if choice.reasoning is not None:
        message["reasoning_content"] = message["reasoning"] = choice.reasoning
    return message


def _stream_call(call: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's streamed call: index always; id, type and name the first time; argument fragments after."""
    out: dict[str, Any] = {"index": call["index"]}
    function = call.get("function") or {}
    if call.get("id"):
        out.update(id=call["id"], type="function")
    part = {k: function[k] for k in ("name", "arguments") if function.get(k) is not None}
    if call.get("id"):
        part.setdefault("arguments", "")
    out["function"] = part
    return out


def chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    """Another API's request, translated, as a chat completion request; what does not validate is a 4xx."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed.from_errors(exc.errors()) from None
