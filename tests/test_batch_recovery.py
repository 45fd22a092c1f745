"""Batch durability drills on a stack of their own (Redis with AOF as compose runs it): kill the worker,
restart Redis, restart the API mid-batch; expire a batch. Each ends with every line answered once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.batch_helpers import (
    check_exactly_once,
    embedding_lines,
    start_batch,
    started,
    wait_final,
    wait_for,
    write_lines,
)
from tests.stack import RedisServer, Stack, wait_until

MINILM = "all-minilm-l6-v2"
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")  # as compose.yaml runs Redis
LINES = 2000


@pytest.fixture(scope="module")
def redis_aof(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"))
    server.start(*AOF)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own(redis_aof: RedisServer, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A fixed worker id: a restarted worker walks its own pending jobs.
    s = Stack(redis_aof.url, models_dir, tmp_path_factory.mktemp("batch-recovery"),
              env_extra={"LLM_WORKER_ID": "batch-recovery-worker"})
    s.start(expect_models=len([p for p in models_dir.iterdir() if p.is_dir()]))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(own: Stack) -> OpenAI:
    return OpenAI(base_url=f"{own.base_url}/v1", api_key="unused", max_retries=0)


def _mid_batch(client: OpenAI, tmp_path: Path, prefix: str) -> tuple[str, list[str]]:
    """A batch that has finished some lines and not all."""
    lines = embedding_lines(LINES, MINILM, prefix=prefix)
    batch = start_batch(client, write_lines(tmp_path / "in.jsonl", lines))
    batch = wait_for(client, batch.id, started)
    assert batch.status == "in_progress", batch
    return batch.id, [x["custom_id"] for x in lines]


def test_worker_sigkill_mid_batch(client: OpenAI, own: Stack, tmp_path: Path) -> None:
    batch_id, custom_ids = _mid_batch(client, tmp_path, "k")
    worker = own.workers[-1]
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    counts = client.batches.retrieve(batch_id).request_counts
    assert counts is not None and counts.completed < LINES  # killed mid-batch
    own.start_worker()
    batch = wait_final(client, batch_id)
    assert batch.status == "completed"
    out, err = check_exactly_once(client, batch, custom_ids)
    assert len(out) == LINES and not err


def test_redis_restart_mid_batch(client: OpenAI, redis_aof: RedisServer, tmp_path: Path) -> None:
    batch_id, custom_ids = _mid_batch(client, tmp_path, "d")
    redis_aof.stop(signal.SIGKILL)  # a crash: what it acknowledged is in the AOF (written before replying)
    redis_aof.start(*AOF)
    batch = wait_final(client, batch_id)
    assert batch.status == "completed"
    out, _ = check_exactly_once(client, batch, custom_ids)
    assert len(out) == LINES


def test_api_restart_mid_batch(client: OpenAI, own: Stack, tmp_path: Path) -> None:
    batch_id, custom_ids = _mid_batch(client, tmp_path, "a")
    assert own.api is not None
    own.api.terminate()
    own.api.wait(timeout=60)
    own.start_api()
    wait_until(lambda: own.health().get("ready"), 60, "the API back")
    batch = wait_final(client, batch_id)
    assert batch.status == "completed"
    out, _ = check_exactly_once(client, batch, custom_ids)
    assert len(out) == LINES


def test_expiry_with_a_tiny_window(client: OpenAI, own: Stack, redis_aof: RedisServer, models_dir: Path,
                                   tmp_path: Path) -> None:
    """A second API replica (same Redis, same data volume) whose batches last 4 s; the worker is frozen
    once the batch has started, so some lines are left when the window closes."""
    short = Stack(redis_aof.url, models_dir, tmp_path / "logs", env_extra={
        "LLM_BATCH_COMPLETION_WINDOW_S": "4", "LLM_DATA_DIR": str(own.logdir / "data")})
    short.start_api()
    worker = own.workers[-1]
    try:
        wait_until(lambda: short.health().get("ready"), 60, "the second API")
        replica = OpenAI(base_url=f"{short.base_url}/v1", api_key="unused", max_retries=0)
        lines = embedding_lines(LINES, MINILM, prefix="e")
        batch = start_batch(replica, write_lines(tmp_path / "in.jsonl", lines))
        wait_for(replica, batch.id, started)
        os.kill(worker.pid, signal.SIGSTOP)
        batch = wait_final(replica, batch.id)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        short.stop()
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    _, err = check_exactly_once(client, batch, [x["custom_id"] for x in lines])  # read through the other replica
    expired = [x for x in err if x["error"]["code"] == "batch_expired"]
    assert expired and len(expired) == len(err) and all(x["response"] is None for x in expired)
