"""Request ids: X-Request-ID on every response, in the job to the worker, in the log lines."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

from api.dispatch import Dispatcher
from api.results import ResultRouter
from common import keys
from common.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_context, request_id_var
from common.protocol import DATA_FIELD, Job, pack
from tests.stack import RedisServer, Stack

GENERATED = re.compile(r"req-[0-9a-f]{32}")


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=30) as client:
        yield client


def test_sane_client_id_is_echoed(http: httpx.Client) -> None:
    sent = "Client-42.a_b:c-" + "x" * 100
    response = http.get("/v1/models", headers={"x-request-id": sent})  # any case of the name
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == sent


def test_missing_id_is_generated_and_fresh(http: httpx.Client) -> None:
    first, second = (http.get("/v1/models").headers["x-request-id"] for _ in range(2))
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second


@pytest.mark.parametrize("insane", ["has space", "semi;colon", "x" * 129, "", "é"])
def test_insane_id_is_replaced(http: httpx.Client, insane: str) -> None:
    response = http.get("/v1/models", headers=[(b"X-Request-ID", insane.encode())])
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_errors_carry_the_id(http: httpx.Client) -> None:
    not_found = http.get("/v1/no-such-route", headers={"X-Request-ID": "r-404"})
    assert not_found.status_code == 404 and not_found.headers["x-request-id"] == "r-404"
    invalid = http.post("/v1/embeddings", json={"model": 3}, headers={"X-Request-ID": "r-422"})
    assert invalid.status_code == 422 and invalid.headers["x-request-id"] == "r-422"
    assert invalid.json()["error"]["code"] == "validation_error"
    unknown_model = http.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert unknown_model.status_code == 404 and GENERATED.fullmatch(unknown_model.headers["x-request-id"])


def test_embeddings_request_is_logged_with_its_id(http: httpx.Client, stack: Stack) -> None:
    request_id = f"emb-log-{uuid.uuid4().hex}"
    response = http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hello"},
                         headers={"X-Request-ID": request_id})
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    log_file = stack.logdir / "api.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if request_id in line]
        if lines:
            break
        time.sleep(0.1)
    assert len(lines) == 1, lines  # one access line, uvicorn's own access log is off
    assert f"[req={request_id}]" in lines[0] and "POST /v1/embeddings 200" in lines[0]
    assert re.search(r" \d+\.\dms$", lines[0])


async def test_dispatcher_stamps_the_job_with_the_request_id(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    kind = f"test-reqid-{uuid.uuid4().hex}"  # a stream no worker reads
    dispatcher = Dispatcher(redis, ResultRouter(redis, f"api-{kind}"), ttl_s=30, max_queued=10)
    try:
        with request_context("from-the-header"):
            await dispatcher.submit(Job(id="j1", kind=kind, model="m", reply_to="r", payload={}))
        await dispatcher.submit(Job(id="j2", kind=kind, model="m", reply_to="r", payload={}))  # no request
        with request_context("ignored"):  # a job that already has one keeps it
            await dispatcher.submit(Job(id="j3", kind=kind, model="m", reply_to="r", payload={}, request_id="own"))
        entries = await redis.xrange(keys.job_stream(kind, "m"))
        jobs = [Job.decode(fields[DATA_FIELD]) for _, fields in entries]
        assert [(j.id, j.request_id) for j in jobs] == [("j1", "from-the-header"), ("j2", None), ("j3", "own")]
    finally:
        await redis.delete(keys.job_stream(kind, "m"), keys.wake_stream(f"api-{kind}"))
        await redis.aclose()


def test_job_round_trips_the_request_id_and_old_jobs_decode() -> None:
    job = Job(id="r1", kind="embedding", model="m", reply_to="llm:res:r1", payload={"input": ["a"]},
              deadline_ms=5, request_id="abc-123")
    assert Job.decode(job.encode()) == job
    old = pack({"t": "job", "id": "r2", "kind": "chat", "model": "m", "reply_to": "llm:res:r2", "payload": {},
                "created_ms": 1, "deadline_ms": 0})  # as written before the field existed
    assert Job.decode(old).request_id is None


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.request_id.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, stream


def test_json_lines_carry_the_request_id_extras_and_exceptions() -> None:
    logger, stream = _capture(JsonFormatter())
    logger.info("outside")
    with request_context("req-json"):
        logger.info("served %s", "x", extra={"status": 200})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    assert request_id_var.get() is None
    outside, served, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(outside) == {"ts", "level", "logger", "message"} and outside["message"] == "outside"
    assert served["request_id"] == "req-json" and served["message"] == "served x" and served["status"] == 200
    assert served["level"] == "INFO" and served["ts"].endswith("+00:00")
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc_info"]


def test_text_lines_show_the_request_id_when_known() -> None:
    logger, stream = _capture(TextFormatter())
    logger.info("plain")
    with request_context("req-text"):
        logger.info("tagged")
    plain, tagged = stream.getvalue().splitlines()
    assert "[req=" not in plain and plain.endswith(": plain")
    assert tagged.endswith(" [req=req-text]: tagged")


def test_body_limit_413_carries_the_id(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", content=b"x" * (32 * 2**20 + 1),
                         headers={"X-Request-ID": "r-413", "Content-Type": "application/json"})
    assert response.status_code == 413 and response.headers["x-request-id"] == "r-413"
