"""What every inference route shares, in one place: its job runs only while its caller is there (a caller who
hangs up cancels it: the route answers 499 to nobody and the worker drops or aborts the job), and the tokens
it used are counted. JSON routes call `answer`, generation routes `generate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.deltas import Choice, collect, join_deltas
from api.responses import JSONBytes
from api.schemas.sampling import SamplingRequest
from api.services import Services
from api.streaming import Format, chain, sse
from common.errors import CallerGone, ServiceError, Unavailable
from common.protocol import Job, Message, MessageKind, ModelType

T = TypeVar("T")


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; cancel it (and so its job) and raise CallerGone if the caller disconnects first.

    The disconnect is awaited as the server hands it over (`http.disconnect` from `receive`), not polled with
    Starlette's `is_disconnected`: that one reads `receive` inside an already-cancelled scope, and under load
    it missed a disconnect for good (a poll that never returned; the job ran on for its whole answer)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise CallerGone("the caller disconnected; the job was cancelled")
    finally:
        for pending in (task, gone):
            pending.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    """Return once the caller has gone (the request's body has been read already: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def count_usage(request: Request, usage: dict[str, Any]) -> None:
    request.app.state.metrics.count_usage(usage)


async def answer(request: Request, services: Services, job: Job) -> Message:
    """A non-streaming job's result message (its usage counted), or its error raised."""
    timeout_s = services.settings.request_timeout_s
    message = await until_disconnected(request, services.dispatcher.call(job, timeout_s))
    count_usage(request, {"prompt_tokens": int(message.body.get("prompt_tokens", 0))})
    return message


async def generation_job(services: Services, body: SamplingRequest) -> Job:
    """A chat or completion request checked against the service's limits and its model, as one job."""
    settings = services.settings
    body.check(settings.chat_max_n)
    info = await services.directory.resolve(body.model, ModelType.CHAT)
    body.check_vocabulary(info.shape.vocab if info.shape else None)
    body.check_model(info)
    return body.to_job(settings.request_timeout_s)


async def _whole(request: Request, messages: AsyncIterator[Message]) -> tuple[list[Choice], dict[str, Any]]:
    """A generation's choices and usage (counted), read to its end while the caller is there."""
    choices, usage = await until_disconnected(request, collect(messages))
    count_usage(request, usage)
    return choices, usage


async def _first(request: Request, messages: AsyncIterator[Message]) -> Message:
    """A stream's first message, timed as the time to first token; an error before it is a plain HTTP error."""
    started = time.perf_counter()
    first = await until_disconnected(request, anext(messages))
    request.app.state.metrics.ttft.observe(time.perf_counter() - started)
    return first


def _event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def generate(request: Request, services: Services, job: Job, fmt: Format, stream: bool,
                   include_usage: bool) -> Response:
    """A generation job as one JSON response or as an SSE stream (errors before the first token: plain HTTP)."""
    messages = services.dispatcher.stream(job, services.settings.request_timeout_s)
    if not stream:
        return JSONBytes(fmt.response(*await _whole(request, messages)))
    first = await _first(request, messages)
    return _event_stream(sse(first, messages, fmt, include_usage, lambda usage: count_usage(request, usage)))


class Door(Protocol):
    """Another API's shape over the same generation (the Responses API, Anthropic Messages): its whole answer,
    its stream of events, and what it keeps of a finished answer."""

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]: ...

    def start_events(self) -> list[bytes]: ...

    def delta_events(self, delta: dict[str, Any]) -> list[bytes]: ...

    def end_events(self, response: dict[str, Any]) -> list[bytes]: ...

    def error_events(self, exc: ServiceError) -> list[bytes]: ...

    async def keep(self, response: dict[str, Any]) -> None: ...


async def _door_events(first: Message, rest: AsyncIterator[Message], door: Door, request: Request
                       ) -> AsyncIterator[bytes]:
    seen: list[Message] = []
    yield b"".join(door.start_events())
    try:
        async for message in chain(first, rest):
            if message.kind is MessageKind.DELTA:
                seen.append(message)
                events = [e for delta in message.body["choices"] for e in door.delta_events(delta)]
                if events:
                    yield b"".join(events)
            elif message.kind is MessageKind.DONE:
                usage = message.body["usage"]
                count_usage(request, usage)
                response = door.response(join_deltas(seen), usage)
                await door.keep(response)
                yield b"".join(door.end_events(response))
                return
        yield b"".join(door.error_events(Unavailable("the generation ended without a result")))
    except ServiceError as exc:
        yield b"".join(door.error_events(exc))


async def generate_door(request: Request, services: Services, job: Job, door: Door, stream: bool) -> Response:
    """A generation job answered in another API's shape: one JSON object, or that API's event stream."""
    messages = services.dispatcher.stream(job, services.settings.request_timeout_s)
    if not stream:
        response = door.response(*await _whole(request, messages))
        await door.keep(response)
        return JSONBytes(response)
    first = await _first(request, messages)
    return _event_stream(_door_events(first, messages, door, request))
