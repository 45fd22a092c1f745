"""api.inference.until_disconnected on a bare ASGI request: the caller's disconnect, as the server hands it over,
cancels the work at once; work that ends first is answered and the listener goes away.

The stack-level checks (a non-streamed chat left mid-answer, an embedding caller who hangs up) are in
tests/test_chat_stream.py and tests/test_fairness.py. Under load, Starlette's polled `is_disconnected` missed
the disconnect for good in 4 of 9 rounds of that chat scenario (two busy processes on the 2-core machine), and
the job ran on for its whole answer; awaiting `receive` does not poll."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from api.inference import until_disconnected
from common.errors import CallerGone


def request_until(gone: asyncio.Event) -> Request:
    """A request whose body has been read: its next `receive` returns when the caller goes."""
    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_a_disconnect_cancels_the_work() -> None:
    async def main() -> None:
        gone, cancelled = asyncio.Event(), asyncio.Event()

        async def work() -> str:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "answer"

        asyncio.get_running_loop().call_later(0.05, gone.set)
        with pytest.raises(CallerGone):
            await asyncio.wait_for(until_disconnected(request_until(gone), work()), 5)
        assert cancelled.is_set()

    asyncio.run(main())


def test_work_that_ends_first_is_answered_and_stops_listening() -> None:
    async def main() -> None:
        before = len(asyncio.all_tasks())
        assert await until_disconnected(request_until(asyncio.Event()), asyncio.sleep(0.01, "answer")) == "answer"
        assert len(asyncio.all_tasks()) == before  # the work and the listener are both done

    asyncio.run(main())
