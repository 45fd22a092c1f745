"""The API joins the deltas that queued while a stream's reader lagged into one message (one SSE write): texts,
reasoning, logprobs and tool-call fragments per choice, in order; the message that ends the run is kept."""

from __future__ import annotations

import asyncio
from typing import Any

from api.dispatch import coalesce
from common.protocol import Message, MessageKind


def delta(index: int, text: str, finish: str | None = None, **extra: Any) -> Message:
    return Message(MessageKind.DELTA, {"choices": [{"index": index, "text": text, "logprobs": None,
                                                    "finish_reason": finish, **extra}]})


def test_queued_deltas_become_one_message_per_choice() -> None:
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in (delta(1, "x"), delta(0, "b", reasoning="r2"), delta(1, "y", "length"),
                    delta(0, "c", "stop", stop_reason="END")):
        queue.put_nowait(message)
    done = Message(MessageKind.DONE, {"usage": {}})
    queue.put_nowait(done)
    queue.put_nowait(delta(0, "never"))  # after the terminal message: not part of this run
    merged, held = coalesce(delta(0, "a", reasoning="r1"), queue)
    assert held is done and queue.qsize() == 1
    assert merged.body["choices"] == [
        {"index": 0, "text": "abc", "logprobs": None, "finish_reason": "stop", "reasoning": "r1r2",
         "stop_reason": "END"},
        {"index": 1, "text": "xy", "logprobs": None, "finish_reason": "length"}]


def test_tool_call_fragments_join() -> None:
    queue: asyncio.Queue[Message] = asyncio.Queue()
    queue.put_nowait(delta(0, "", tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]))
    queue.put_nowait(delta(0, "", "tool_calls", tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]))
    first = delta(0, "", tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "get_weather"}}])
    merged, held = coalesce(first, queue)
    (choice,) = merged.body["choices"]
    assert held is None and choice["finish_reason"] == "tool_calls"
    assert choice["tool_calls"] == [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]


def test_a_reader_that_keeps_up_gets_each_message_as_it_is() -> None:
    queue: asyncio.Queue[Message] = asyncio.Queue()
    first = delta(0, "a")
    assert coalesce(first, queue) == (first, None)
