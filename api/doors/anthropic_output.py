"""A generation as Anthropic's Messages API answers it: the message with its content blocks (thinking, text,
tool_use) and stop reason, and the stream of its events (`message_start` ... `message_stop`)."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from api.deltas import Choice
from api.doors.anthropic import MessagesRequest
from api.errors import anthropic_envelope
from api.schemas.tools import arguments_object
from common.errors import ServiceError


def tool_use_id(call_id: str | None) -> str:
    return "toolu_" + (call_id.removeprefix("call_") if call_id else secrets.token_hex(12))


def content_blocks(choice: Choice) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if choice.reasoning:
        blocks.append({"type": "thinking", "thinking": choice.reasoning, "signature": ""})
    if choice.text:
        blocks.append({"type": "text", "text": choice.text})
    blocks += [{"type": "tool_use", "id": tool_use_id(c["id"]), "name": c["function"]["name"],
                "input": arguments_object(c["function"]["arguments"])} for c in choice.calls()]
    return blocks


def stop(body: MessagesRequest, choice: Choice) -> tuple[str, str | None]:
    """Anthropic's stop reason, and the stop sequence that ended the turn when one did."""
    if choice.finish_reason == "length":
        return "max_tokens", None
    if choice.finish_reason == "tool_calls" or choice.calls():
        return "tool_use", None
    if isinstance(choice.stop_reason, str) and choice.stop_reason in (body.stop_sequences or ()):
        return "stop_sequence", choice.stop_reason
    return "end_turn", None


def anthropic_usage(usage: dict[str, Any]) -> dict[str, Any]:
    return {"input_tokens": int(usage.get("prompt_tokens", 0)), "output_tokens": int(usage.get("completion_tokens", 0)),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


class MessagesDoor:
    """Anthropic Messages over one chat generation (see `api.inference.Door`)."""

    def __init__(self, body: MessagesRequest, message_id: str) -> None:
        self.body = body
        self.id = message_id
        self.block: dict[str, Any] | None = None  # the content block being streamed
        self.index = -1
        self.calls: set[int] = set()

    def message(self, content: list[dict[str, Any]], stop_reason: str | None, stop_sequence: str | None,
                usage: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.body.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]:
        choice = choices[0] if choices else Choice(0)
        reason, sequence = stop(self.body, choice)
        return self.message(content_blocks(choice), reason, sequence, anthropic_usage(usage))

    def event(self, kind: str, **fields: Any) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"

    def start_events(self) -> list[bytes]:
        usage = anthropic_usage({})
        return [self.event("message_start", message=self.message([], None, None, usage)), self.event("ping")]

    def delta_events(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if delta.get("reasoning"):
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning"]}))
        if delta.get("text"):
            out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": delta["text"]}))
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            if call["index"] not in self.calls:
                self.calls.add(call["index"])
                out += self._open("tool_use", {"type": "tool_use", "id": tool_use_id(call.get("id")),
                                               "name": function.get("name") or "", "input": {}})
            if function.get("arguments"):
                out.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        if self.block is not None and self.block["type"] == kind and kind != "tool_use":
            return []
        out = self._close()
        self.block, self.index = block, self.index + 1
        return [*out, self.event("content_block_start", index=self.index, content_block=block)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self.event("content_block_delta", index=self.index, delta=delta)

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        self.block = None
        return [self.event("content_block_stop", index=self.index)]

    def end_events(self, response: dict[str, Any]) -> list[bytes]:
        usage = response["usage"]
        delta = {"stop_reason": response["stop_reason"], "stop_sequence": response["stop_sequence"]}
        return [*self._close(), self.event("message_delta", delta=delta, usage=usage), self.event("message_stop")]

    def error_events(self, exc: ServiceError) -> list[bytes]:
        return [self.event("error", error=anthropic_envelope(exc)["error"])]

    async def keep(self, response: dict[str, Any]) -> None:
        """Nothing is kept: the Messages API is stateless."""
