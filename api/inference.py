"""What every inference route shares, in one place: its job runs only while its caller is there (a caller who
hangs up cancels it: the route answers 499 to nobody and the worker drops or aborts the job), and the tokens
it used are counted. JSON routes call `answer`, generation routes `generate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.deltas import collect
from api.responses import JSONBytes
from api.services import Services
from api.streaming import Format, sse
from common.errors import CallerGone
from common.protocol import Job, Message

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; cancel it (and so its job) and raise CallerGone if the caller disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise CallerGone("the caller disconnected; the job was cancelled")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def count_usage(request: Request, usage: dict[str, Any]) -> None:
    request.app.state.metrics.count_usage(usage)


async def answer(request: Request, services: Services, job: Job) -> Message:
    """A non-streaming job's result message (its usage counted), or its error raised."""
    timeout_s = services.settings.request_timeout_s
    message = await until_disconnected(request, services.dispatcher.call(job, timeout_s))
    count_usage(request, {"prompt_tokens": int(message.body.get("prompt_tokens", 0))})
    return message


async def generate(request: Request, services: Services, job: Job, fmt: Format, stream: bool,
                   include_usage: bool) -> Response:
    """A generation job as one JSON response or as an SSE stream (errors before the first token: plain HTTP)."""
    messages = services.dispatcher.stream(job, services.settings.request_timeout_s)
    started = time.perf_counter()
    if not stream:
        choices, usage = await until_disconnected(request, collect(messages))
        count_usage(request, usage)
        return JSONBytes(fmt.response(choices, usage))
    first = await until_disconnected(request, anext(messages))  # errors before a token: plain HTTP
    request.app.state.metrics.ttft.observe(time.perf_counter() - started)
    events = sse(first, messages, fmt, include_usage, lambda usage: count_usage(request, usage))
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
