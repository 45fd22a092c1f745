"""The wire: versioned msgpack, never pickle; errors survive the trip."""

from __future__ import annotations

import msgpack
import pytest

from common.errors import InvalidRequest, ModelNotFound, from_wire
from common.protocol import Job, Message, MessageKind, WireError, pack


def test_job_round_trip_keeps_bytes_and_nesting() -> None:
    job = Job(id="r1", kind="embedding", model="m", reply_to="llm:res:r1",
              payload={"input": ["a", "b"], "dimensions": None, "blob": b"\x00\x01"}, deadline_ms=5)
    assert Job.decode(job.encode()) == job


def test_message_round_trip_and_terminal_kinds() -> None:
    msg = Message(MessageKind.RESULT, {"data": [b"\x00\x00\x80\x3f"], "prompt_tokens": 1})
    assert Message.decode(msg.encode()) == msg
    assert msg.terminal
    assert not Message(MessageKind.DELTA, {}).terminal


@pytest.mark.parametrize("data", [
    b"\x80\x04\x95",  # a pickle header
    msgpack.packb({"v": 999, "t": "result", "body": {}}),
    msgpack.packb([1, 2, 3]),
    pack({"t": "nonsense", "body": {}}),
    pack({"t": "result"}),
])
def test_foreign_or_future_messages_are_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        Message.decode(data)


def test_job_missing_fields_is_refused() -> None:
    with pytest.raises(WireError):
        Job.decode(pack({"t": "job", "id": "x"}))


def test_errors_cross_the_wire_with_status_code_and_param() -> None:
    sent = Message.error(ModelNotFound("no such model", param="model"))
    got = from_wire(Message.decode(sent.encode()).body)
    assert (got.status, got.code, got.param, got.message) == (404, "model_not_found", "model", "no such model")
    bad = from_wire(InvalidRequest("bad", code="empty_input").wire())
    assert bad.status == 400 and bad.code == "empty_input"
