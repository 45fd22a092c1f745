"""A generation's messages as Server-Sent Events in OpenAI's chunk format: one write per message however many
chunks it makes, the usage chunk when asked, `data: [DONE]` last; a failure after the first token is an error
chunk, then `[DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from api.deltas import Choice
from common.errors import ServiceError
from common.protocol import Message, MessageKind

DONE = b"data: [DONE]\n\n"


class Format(Protocol):
    def chunk(self, choice: dict[str, Any], first: bool) -> list[dict[str, Any]]: ...

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]: ...

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]: ...


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def chain(first: Message, rest: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """A stream's messages again, its first (read before the response began) included."""
    yield first
    async for message in rest:
        yield message


async def sse(first: Message, rest: AsyncIterator[Message], fmt: Format, include_usage: bool,
              on_usage: Callable[[dict[str, Any]], None]) -> AsyncIterator[bytes]:
    seen: set[int] = set()
    try:
        async for message in chain(first, rest):
            if message.kind is MessageKind.DELTA:  # one write per message, however many chunks it makes
                events = []
                for delta in message.body["choices"]:
                    events += [event(chunk) for chunk in fmt.chunk(delta, first=delta["index"] not in seen)]
                    seen.add(delta["index"])
                if events:
                    yield b"".join(events)
            elif message.kind is MessageKind.DONE:
                on_usage(message.body["usage"])
                if include_usage:
                    yield event(fmt.usage_chunk(message.body["usage"]))
    except ServiceError as exc:
        yield event(exc.body())
    yield DONE
