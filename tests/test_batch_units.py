"""Batch API pieces without processes: input validation, line grouping and splitting, state, uploads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from api.batches.files import FileStore
from api.batches.lines import Embeddings, Line, Rerank, error_line, read_at, read_lines, unfinished_line
from api.batches.runner import truncate_to, write_at
from api.batches.schemas import BatchState, Status
from api.batches.store import line_done
from api.batches.uploads import receive_upload
from api.batches.validate import scan_input
from cli.batch_watch import render
from common.errors import InvalidRequest, PayloadTooLarge
from common.protocol import Job, Message, MessageKind
from common.settings import Settings


def _line(i: int, url: str = "/v1/embeddings", **body: Any) -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url,
                       "body": {"model": "m", "input": f"text {i}", **body}})


def test_scan_reports_every_bad_line_with_its_number(tmp_path: Path) -> None:
    lines = [_line(1), "{not json", json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {}}),
             _line(1), _line(5, url="/v1/chat/completions"), "", json.dumps([1, 2]),
             json.dumps({"custom_id": "x", "method": "GET", "url": "/v1/embeddings", "body": {"model": "m"}}),
             json.dumps({"custom_id": "y", "method": "POST", "url": "/v1/embeddings", "body": {"input": "a"}})]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    scan = scan_input(path, "/v1/embeddings", 50_000)
    assert scan.total == 8  # the blank line 6 is not a request
    assert [(e["line"], e["code"]) for e in scan.errors] == [
        (2, "invalid_json_line"), (3, "missing_required_parameter"), (4, "duplicate_custom_id"),
        (5, "mismatched_endpoint"), (7, "invalid_json_line"), (8, "invalid_method"), (9, "missing_required_parameter")]
    assert scan.models == {"m": [1]}


def test_scan_empty_and_too_long_files(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n\n")
    assert [e["code"] for e in scan_input(path, "/v1/embeddings", 10).errors] == ["empty_file"]
    path.write_text("\n".join(_line(i) for i in range(3)))
    assert [e["code"] for e in scan_input(path, "/v1/embeddings", 2).errors] == ["too_many_requests"]


def test_read_lines_resumes_at_its_cursor(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(_line(0) + "\n\n" + _line(1) + "\n" + _line(2))  # no final newline
    first, number, offset, eof = read_lines(path, 1, 0, 2)
    assert [ln.custom_id for ln in first] == ["r0", "r1"] and [ln.number for ln in first] == [1, 3]
    assert not eof
    rest, number, offset, eof = read_lines(path, number, offset, 10)
    assert [(ln.custom_id, ln.number) for ln in rest] == [("r2", 4)] and eof
    assert [ln.custom_id for ln in read_at(path, [[3, first[1].offset], [1, 0]])] == ["r1", "r0"]


def _settings(**extra: Any) -> Settings:
    return Settings(batch_job_inputs=4, **extra)


def test_embedding_lines_are_grouped_by_model_and_split_back() -> None:
    lines = [read_line(i, {"model": "a", "input": [f"x{i}", f"y{i}"] if i == 0 else f"x{i}"}) for i in range(5)]
    lines.append(read_line(5, {"model": "b", "input": "z"}))
    lines.append(read_line(6, {"model": "a", "input": ""}))  # empty: a 400 for this line only
    jobs, errors = Embeddings(_settings(), 0).plan(lines)
    assert [(p.job.model, p.job.payload["input"]) for p in jobs] == [
        ("a", ["x0", "y0", "x1", "x2"]), ("a", ["x3", "x4"]), ("b", ["z"])]
    assert jobs[0].lines == [[1, 0], [2, 0], [3, 0]]
    (bad,) = errors
    assert json.loads(bad.data)["response"]["status_code"] == 400 and bad.line == 7
    vectors = [bytes([i]) * 4 for i in range(4)]
    result = Message(MessageKind.RESULT, {"data": vectors, "prompt_tokens": 10, "tokens": [1, 2, 3, 4]})
    outcomes = Embeddings(_settings(), 0).render("job-1", lines[:3], [result])
    bodies = [json.loads(o.data)["response"]["body"] for o in outcomes]
    assert [len(b["data"]) for b in bodies] == [2, 1, 1]
    assert [b["usage"]["prompt_tokens"] for b in bodies] == [3, 3, 4]
    assert all(json.loads(o.data)["custom_id"] == f"r{i}" for i, o in enumerate(outcomes))


def read_line(i: int, body: dict[str, Any]) -> Line:
    return Line(i + 1, 0, f"r{i}", body)


def test_rerank_lines_need_a_model() -> None:
    jobs, errors = Rerank(_settings(), 0).plan([read_line(0, {"query": "q", "documents": ["a"]})])
    assert not jobs and json.loads(errors[0].data)["error"]["message"] == "'model' is required in a batch"


def test_output_line_shapes() -> None:
    line = read_line(0, {})
    failed = json.loads(error_line(line, "job-1", InvalidRequest("bad", code="x")).data)
    assert failed["response"]["status_code"] == 400 and failed["error"] == {"code": "x", "message": "bad"}
    expired = json.loads(unfinished_line(line, "batch_expired", "late").data)
    assert expired["response"] is None and expired["error"]["code"] == "batch_expired"
    assert expired["custom_id"] == "r0" and expired["id"].startswith("batch_req_")


def test_writes_land_at_the_committed_offset(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    end = write_at(path, 0, b"a\n")
    write_at(path, end, b"garbage that was never committed\n")
    truncate_to(path, end)
    assert write_at(path, end, b"b\n") == 4 and path.read_bytes() == b"a\nb\n"


def test_done_bitmap_matches_redis_bit_order() -> None:
    bitmap = bytes([0b0100_0000, 0b0000_0001])  # SETBIT 1 and SETBIT 15
    assert [n for n in range(20) if line_done(bitmap, n)] == [1, 15]


def test_state_round_trips_through_the_hash() -> None:
    state = BatchState(id="batch_1", endpoint="/v1/embeddings", input_file_id="file-1", completion_window="24h",
                       created_at=10, expires_at=20, metadata={"k": "v"}, total=3, completed=1,
                       stamps={"in_progress_at": 11})
    raw = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in state.to_fields().items()}
    again = BatchState.from_fields(raw)
    assert again == state
    obj = again.to_object()
    assert obj["status"] == Status.VALIDATING and obj["in_progress_at"] == 11 and obj["completed_at"] is None
    assert obj["request_counts"] == {"total": 3, "completed": 1, "failed": 0} and obj["errors"] is None


def test_watch_renders_a_progress_bar() -> None:
    line = render({"id": "batch_1", "status": "in_progress",
                   "request_counts": {"total": 200, "completed": 90, "failed": 10}})
    assert "[" + "#" * 20 + "-" * 20 + "]" in line and "100/200" in line and "in_progress" in line


def _request(body: bytes, boundary: str = "xyz") -> Request:
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/files", "headers": headers}, receive)


def _multipart(content: bytes, purpose: str = "batch") -> bytes:
    return (b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n" + purpose.encode() +
            b"\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            b"Content-Type: application/jsonl\r\n\r\n" + content + b"\r\n--xyz--\r\n")


async def test_upload_streams_to_the_store_within_limits(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    content = b"".join(f"{_line(i)}\n".encode() for i in range(5))
    meta = await receive_upload(_request(_multipart(content)), store, 10_000, 5)
    assert (meta.bytes, meta.lines, meta.filename, meta.purpose) == (len(content), 5, "in.jsonl", "batch")
    assert store.content_path(meta.id).read_bytes() == content
    with pytest.raises(PayloadTooLarge):
        await receive_upload(_request(_multipart(content)), store, 100, 5)
    with pytest.raises(PayloadTooLarge) as lines:
        await receive_upload(_request(_multipart(content)), store, 10_000, 4)
    assert lines.value.code == "too_many_lines"
    with pytest.raises(InvalidRequest) as purpose:
        await receive_upload(_request(_multipart(content, "fine-tune")), store, 10_000, 5)
    assert purpose.value.code == "invalid_purpose"
    assert [m.id for m in store.list(None, None, 10, "desc")[0]] == [meta.id]
    assert not list(store.tmp_dir.iterdir())  # refused uploads leave nothing behind


def test_rounds_serve_interactive_jobs_before_batch_jobs() -> None:
    from worker.microbatch import MicroBatchQueue, Pending

    def pending(job_id: str, created_ms: int, batch: bool) -> Pending:
        job = Job(id=job_id, kind="embedding", model="m", reply_to="", payload={}, created_ms=created_ms)
        return Pending(job, "0-1", [[1, 2, 3]], batch=batch)

    queue = MicroBatchQueue(budget_tokens=1000, max_items=100)
    queue.add(pending("old-batch", 1, True))
    queue.add(pending("new-interactive", 2, False))
    first = queue.next_batch()
    assert first is not None and [it.pending.job.id for it in first[1]] == ["new-interactive"]
    second = queue.next_batch()
    assert second is not None and [it.pending.job.id for it in second[1]] == ["old-batch"]
    assert queue.next_batch() is None


def test_batch_lane_batches_are_cut_to_the_paced_size() -> None:
    from worker.microbatch import MicroBatchQueue, Pending

    queue = MicroBatchQueue(budget_tokens=1000, max_items=100)
    for i in range(3):
        job = Job(id=f"b{i}", kind="embedding", model="m", reply_to="", payload={}, created_ms=i)
        queue.add(Pending(job, "0-1", [[1]] * 3, batch=True))
    queue.paced_tokens["m"] = 6
    sizes = []
    while (picked := queue.next_batch()) is not None:
        sizes.append(sorted({it.pending.job.id for it in picked[1]}))
    assert sizes == [["b0", "b1"], ["b2"]]


def test_a_large_batch_job_spans_batches() -> None:
    from worker.microbatch import MicroBatchQueue, Pending

    queue = MicroBatchQueue(budget_tokens=1000, max_items=100)
    job = Job(id="big", kind="embedding", model="m", reply_to="", payload={}, created_ms=0)
    queue.add(Pending(job, "0-1", [[1]] * 5, batch=True))
    queue.paced_tokens["m"] = 2
    batches = []
    while (picked := queue.next_batch()) is not None:
        batches.append(sorted(it.index for it in picked[1]))
    assert batches == [[0, 1], [2, 3], [4]] and len(queue) == 0
