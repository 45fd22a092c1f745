"""The Batch API end to end through the OpenAI SDK, against the session's API, worker and Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import NotFoundError, OpenAI

from tests.batch_helpers import (
    check_exactly_once,
    embedding_lines,
    file_lines,
    start_batch,
    started,
    wait_final,
    wait_for,
    write_lines,
)
from tests.stack import Stack

QWEN_EMB = "tiny-qwen3-embedding"
MINILM = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def test_5000_line_embedding_batch_equals_direct_embeddings(client: OpenAI, tmp_path: Path) -> None:
    lines = embedding_lines(5000, QWEN_EMB)
    batch = start_batch(client, write_lines(tmp_path / "in.jsonl", lines))
    assert batch.status == "validating" and batch.request_counts is not None
    seen: list[str] = []
    batch = wait_for(client, batch.id, lambda b: b.status in {"completed", "failed", "expired", "cancelled"},
                     seen=seen)
    assert batch.status == "completed", batch
    assert [s for s in seen if s != "validating"][-1] == "completed"
    assert set(seen) <= {"validating", "in_progress", "finalizing", "completed"}
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at  # type: ignore[operator]
    assert batch.error_file_id is None and batch.errors is None
    out, _ = check_exactly_once(client, batch, [x["custom_id"] for x in lines])

    texts = [x["body"]["input"] for x in lines]
    direct = [d.embedding for i in range(0, len(texts), 2048)
              for d in client.embeddings.create(model=QWEN_EMB, input=texts[i:i + 2048], encoding_format="float").data]
    by_id = {x["custom_id"]: x["response"]["body"] for x in out}
    got = np.array([by_id[x["custom_id"]]["data"][0]["embedding"] for x in lines])
    assert np.allclose(got, np.array(direct), atol=1e-5, rtol=0)
    body = by_id["r0"]
    assert body["object"] == "list" and body["model"] == QWEN_EMB and body["usage"]["prompt_tokens"] > 0
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"  # type: ignore[arg-type]


def test_malformed_lines_fail_the_batch_with_line_numbers(client: OpenAI, tmp_path: Path) -> None:
    good = embedding_lines(3, QWEN_EMB)
    rows: list[dict[str, object] | str] = [
        good[0],                                                     # 1 fine
        '{"custom_id": "broken", "method": "POST"',                  # 2 bad JSON
        {"method": "POST", "url": "/v1/embeddings", "body": {"model": QWEN_EMB, "input": "x"}},  # 3 no custom_id
        {**good[1], "custom_id": good[0]["custom_id"]},              # 4 duplicate custom_id
        {**good[2], "url": "/v1/chat/completions"},                  # 5 wrong url
        {"custom_id": "m1", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "no-such-model", "input": "x"}},          # 6 unknown model
        {"custom_id": "m2", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "tiny-qwen3-chat", "input": "x"}},        # 7 a chat model
    ]
    batch = start_batch(client, write_lines(tmp_path / "bad.jsonl", rows))  # type: ignore[arg-type]
    batch = wait_final(client, batch.id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"), (3, "missing_required_parameter"), (4, "duplicate_custom_id"),
        (5, "mismatched_endpoint"), (6, "model_not_found"), (7, "wrong_model_type")]
    assert batch.errors.data[1].param == "custom_id" and all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.error_file_id is None


def test_invalid_bodies_are_per_line_errors(client: OpenAI, tmp_path: Path) -> None:
    lines = embedding_lines(4, QWEN_EMB)
    lines[1]["body"]["input"] = ""  # 400 empty_input
    lines[2]["body"]["input"] = 42  # 422 validation_error
    batch = start_batch(client, write_lines(tmp_path / "in.jsonl", lines))
    batch = wait_final(client, batch.id)
    assert batch.status == "completed"
    out, err = check_exactly_once(client, batch, [x["custom_id"] for x in lines])
    by_id = {x["custom_id"]: x for x in err}
    assert by_id["r1"]["response"]["status_code"] == 400 and by_id["r1"]["error"]["code"] == "empty_input"
    assert by_id["r2"]["response"]["status_code"] == 422 and by_id["r2"]["error"]["code"] == "validation_error"
    assert by_id["r1"]["response"]["body"]["error"]["code"] == "empty_input"
    assert sorted(x["custom_id"] for x in out) == ["r0", "r3"]


def test_cancel_mid_run_keeps_partial_output(client: OpenAI, tmp_path: Path) -> None:
    lines = embedding_lines(5000, MINILM, prefix="c")
    batch = start_batch(client, write_lines(tmp_path / "in.jsonl", lines))
    wait_for(client, batch.id, started)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    batch = wait_final(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None and batch.completed_at is None
    out, err = check_exactly_once(client, batch, [x["custom_id"] for x in lines])
    assert out, "the lines finished before the cancel are kept"
    assert err and {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert all(x["response"] is None for x in err)
    again = client.batches.cancel(batch.id)  # cancelling a cancelled batch changes nothing
    assert again.status == "cancelled"


def test_interactive_requests_answer_while_a_batch_runs(client: OpenAI, tmp_path: Path) -> None:
    lines = embedding_lines(3000, MINILM, prefix="i")
    batch = start_batch(client, write_lines(tmp_path / "in.jsonl", lines))
    wait_for(client, batch.id, started)
    answers: list[int] = []

    def ask() -> None:
        for i in range(10):
            response = client.embeddings.create(model=MINILM, input=f"interactive {i}")
            answers.append(len(response.data[0].embedding))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    during = client.batches.retrieve(batch.id)
    assert answers == [384] * 30
    assert during.status in {"in_progress", "finalizing", "completed"}
    batch = wait_final(client, batch.id)
    assert batch.status == "completed"
    check_exactly_once(client, batch, [x["custom_id"] for x in lines])


def test_chat_and_rerank_batches_answer_like_the_endpoints(client: OpenAI, stack: Stack, tmp_path: Path) -> None:
    chat_body = {"model": "tiny-qwen3-chat", "messages": [{"role": "user", "content": "hello"}],
                 "max_tokens": 5, "temperature": 0}
    chat = start_batch(client, write_lines(tmp_path / "chat.jsonl", [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body}
        for i in range(3)]), endpoint="/v1/chat/completions")
    rerank_body = {"model": "tiny-bert-reranker", "query": "a cat", "documents": ["a cat sits", "stock prices"]}
    rerank = start_batch(client, write_lines(tmp_path / "rerank.jsonl", [
        {"custom_id": "k0", "method": "POST", "url": "/v1/rerank", "body": rerank_body}]), endpoint="/v1/rerank")
    chat, rerank = wait_final(client, chat.id), wait_final(client, rerank.id)
    assert (chat.status, rerank.status) == ("completed", "completed")
    direct_chat = httpx.post(f"{stack.base_url}/v1/chat/completions", json=chat_body, timeout=120).json()
    for line in check_exactly_once(client, chat, ["c0", "c1", "c2"])[0]:
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == direct_chat["choices"][0]["message"]["content"]
        assert body["usage"] == direct_chat["usage"]
    direct_rerank = httpx.post(f"{stack.base_url}/v1/rerank", json=rerank_body, timeout=120).json()
    (line,), _ = check_exactly_once(client, rerank, ["k0"])
    assert [r["index"] for r in line["response"]["body"]["results"]] == [r["index"] for r in direct_rerank["results"]]


def test_files_api(client: OpenAI, stack: Stack, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", embedding_lines(3, QWEN_EMB))
    with path.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="batch")
    assert (uploaded.bytes, uploaded.purpose, uploaded.filename) == (path.stat().st_size, "batch", "in.jsonl")
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).read() == path.read_bytes()
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(NotFoundError):
        client.files.retrieve(uploaded.id)
    base = f"{stack.base_url}/v1/files"
    for bad in ("file-unknown", "..%2F..%2Fetc%2Fpasswd", "file-" + "0" * 32):
        assert httpx.get(f"{base}/{bad}/content").status_code == 404
    wrong = httpx.post(base, files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
    assert httpx.post(base, json={"purpose": "batch"}).status_code == 400
    assert _declared_too_big(stack.port).startswith(b"HTTP/1.1 413")


def _declared_too_big(port: int) -> bytes:
    """An upload announcing a terabyte is refused before its body is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1000000000000\r\n\r\n--b\r\n")
        return sock.recv(64)


def test_batch_objects_errors_and_pagination(client: OpenAI, tmp_path: Path) -> None:
    ids = [start_batch(client, write_lines(tmp_path / f"{i}.jsonl", embedding_lines(2, QWEN_EMB))).id
           for i in range(3)]
    for batch_id in ids:
        assert wait_final(client, batch_id).status == "completed"
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    with pytest.raises(NotFoundError):
        client.batches.retrieve("batch_nope")
    cancel_done = httpx.post(f"{client.base_url}batches/{ids[0]}/cancel")
    assert cancel_done.status_code == 400 and cancel_done.json()["error"]["code"] == "batch_not_cancellable"
    missing = httpx.post(f"{client.base_url}batches", json={"input_file_id": "file-" + "1" * 32,
                                                            "endpoint": "/v1/embeddings", "completion_window": "24h"})
    assert missing.status_code == 404
    bad_endpoint = httpx.post(f"{client.base_url}batches", json={"input_file_id": "x", "endpoint": "/v1/images",
                                                                 "completion_window": "24h"})
    assert bad_endpoint.status_code == 422
    outputs = [json.loads(x)["custom_id"] for x in client.files.content(
        client.batches.retrieve(ids[0]).output_file_id or "").text.splitlines()]
    assert sorted(outputs) == ["r0", "r1"]
    assert file_lines(client, None) == []


def test_cli_watch_shows_the_progress_bar(client: OpenAI, stack: Stack, tmp_path: Path) -> None:
    batch = start_batch(client, write_lines(tmp_path / "in.jsonl", embedding_lines(50, QWEN_EMB)))
    proc = subprocess.run([sys.executable, "-m", "cli", "batch", "watch", batch.id,
                           "--base-url", stack.base_url], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **stack.env()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()
    assert any("[" + "#" * 40 + "] 50/50" in line and "completed" in line for line in last)
    assert f"output_file_id {client.batches.retrieve(batch.id).output_file_id}" in proc.stdout
    unknown = subprocess.run([sys.executable, "-m", "cli", "batch", "watch", "batch_nope",
                              "--base-url", stack.base_url], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "404" in unknown.stdout
