"""A generation's streamed deltas gathered into whole choices: text, logprobs and finish reason per index
(the non-streaming answer, and the Batch API's output lines)."""

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

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, delta: dict[str, Any]) -> None:
        self.parts.append(delta["text"])
        if delta["logprobs"] is not None:
            self.logprobs = (self.logprobs or []) + delta["logprobs"]
        self.finish_reason = delta["finish_reason"] or self.finish_reason


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
