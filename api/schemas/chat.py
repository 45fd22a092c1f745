"""`POST /v1/chat/completions`: the request, and its response and stream chunks in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.deltas import Choice
from api.schemas.base import INT32_MAX
from api.schemas.sampling import SamplingRequest
from common.errors import InvalidRequest


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self, index: int) -> str:
        if self.role == "tool" or self.model_extra:
            extra = "tool" if self.role == "tool" else next(iter(self.model_extra or {}))
            raise InvalidRequest(f"messages[{index}]: '{extra}' messages/fields are not supported",
                                 param=f"messages.{index}", code="unsupported_parameter")
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(f"messages[{index}]: content parts of type '{part.type}' are not supported",
                                     param=f"messages.{index}.content", code="unsupported_content")
        return "".join(part.text or "" for part in self.content)


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

    def prompts(self) -> list[dict[str, Any]]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                    for i, m in enumerate(self.messages)]
        return [{"messages": messages}]

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
        delta: dict[str, Any] = {"content": choice["text"]}
        if first:
            delta["role"] = "assistant"
        if first or choice["text"] or choice["logprobs"]:
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
        body = [{"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                 "logprobs": chat_logprobs(c.logprobs), "finish_reason": c.finish_reason} for c in choices]
        return {**self.base, "object": self.object_name, "choices": body, "usage": usage}
