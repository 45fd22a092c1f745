"""Turn a generation job's messages into one JSON response or an SSE stream, in OpenAI's formats.

The worker always streams deltas; the API either gathers them (non-streaming) or forwards them as
SSE chunks. A failure before the first token is a plain HTTP error; after it, an error chunk then
`[DONE]`. A caller that disconnects (stream or not) cancels the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.responses import JSONBytes
from common.errors import ServiceError, Unavailable
from common.protocol import Message, MessageKind

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25
DONE = b"data: [DONE]\n\n"


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


class Format(Protocol):
    def chunk(self, choice: dict[str, Any], first: bool) -> list[dict[str, Any]]: ...

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]: ...

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]: ...


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def join_deltas(messages: Iterable[Message]) -> list[Choice]:
    """Every choice's text (and logprobs, finish reason) from a job's delta messages, by index."""
    choices: dict[int, Choice] = {}
    for message in messages:
        if message.kind is MessageKind.DELTA:
            for delta in message.body["choices"]:
                choices.setdefault(delta["index"], Choice(delta["index"])).add(delta)
    return [choices[i] for i in sorted(choices)]


async def collect(messages: AsyncIterator[Message]) -> tuple[list[Choice], dict[str, Any]]:
    seen: list[Message] = []
    async for message in messages:
        if message.kind is MessageKind.DONE:
            return join_deltas(seen), message.body["usage"]
        seen.append(message)
    raise Unavailable("the generation ended without a result")


async def sse(first: Message, rest: AsyncIterator[Message], fmt: Format, include_usage: bool,
              on_usage: Callable[[dict[str, Any]], None]) -> AsyncIterator[bytes]:
    seen: set[int] = set()

    async def messages() -> AsyncIterator[Message]:
        yield first
        async for message in rest:
            yield message

    try:
        async for message in messages():
            if message.kind is MessageKind.DELTA:  # one write per message, however many chunks it makes
                events = []
                for delta in message.body["choices"]:
                    events += [_event(chunk) for chunk in fmt.chunk(delta, first=delta["index"] not in seen)]
                    seen.add(delta["index"])
                if events:
                    yield b"".join(events)
            elif message.kind is MessageKind.DONE:
                on_usage(message.body["usage"])
                if include_usage:
                    yield _event(fmt.usage_chunk(message.body["usage"]))
    except ServiceError as exc:
        yield _event(exc.body())
    yield DONE


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`; cancel it (and so its job) if the caller disconnects first. None when they did."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def respond(request: Request, messages: AsyncIterator[Message], fmt: Format, stream: bool,
                  include_usage: bool) -> Response:
    metrics = request.app.state.metrics
    started = time.perf_counter()
    if not stream:
        result = await until_disconnected(request, collect(messages))
        if result is None:
            return Response(status_code=499)
        metrics.count_usage(result[1])
        return JSONBytes(fmt.response(*result))
    first = await until_disconnected(request, anext(messages))  # errors before a token: plain HTTP
    if first is None:
        return Response(status_code=499)
    metrics.ttft.observe(time.perf_counter() - started)
    events = sse(first, messages, fmt, include_usage, metrics.count_usage)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
