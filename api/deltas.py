"""A generation's streamed deltas gathered into whole choices: text, reasoning, tool calls, logprobs and finish
reason per index (the non-streaming answer, and the Batch API's output lines)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from common.errors import Unavailable
from common.protocol import Message, MessageKind


@dataclass
class Choice:
    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    reasoning_parts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # by call index, arguments joined
    stop_reason: str | int | None = None  # the stop string or token id that ended it (None: EOS or length)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str | None:
        return "".join(self.reasoning_parts) if self.reasoning_parts else None

    def calls(self) -> list[dict[str, Any]]:
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]

    def add(self, delta: dict[str, Any]) -> None:
        self.parts.append(delta["text"])
        if delta.get("reasoning"):
            self.reasoning_parts.append(delta["reasoning"])
        for call in delta.get("tool_calls") or ():
            whole = self.tool_calls.setdefault(call["index"], {"id": None, "type": "function",
                                                               "function": {"name": "", "arguments": ""}})
            whole["id"] = call.get("id") or whole["id"]
            function = call.get("function") or {}
            whole["function"]["name"] += function.get("name") or ""
            whole["function"]["arguments"] += function.get("arguments") or ""
        if delta["logprobs"] is not None:
            self.logprobs = (self.logprobs or []) + delta["logprobs"]
        self.finish_reason = delta["finish_reason"] or self.finish_reason
        self.stop_reason = delta.get("stop_reason", self.stop_reason)


def join_deltas(messages: Iterable[Message]) -> list[Choice]:
    """Every choice's text (and logprobs, finish reason) from a job's delta messages, by index."""
    choices: dict[int, Choice] = {}
    for message in messages:
        if message.kind is MessageKind.DELTA:
            for delta in message.body["choices"]:
                choices.setdefault(delta["index"], Choice(delta["index"])).add(delta)
    return [choices[i] for i in sorted(choices)]


async def collect(messages: AsyncIterator[Message]) -> tuple[list[Choice], dict[str, Any]]:
    """The choices and the usage of a whole generation."""
    seen: list[Message] = []
    async for message in messages:
        if message.kind is MessageKind.DONE:
            return join_deltas(seen), message.body["usage"]
        seen.append(message)
    raise Unavailable("the generation ended without a result")
