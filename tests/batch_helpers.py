"""Helpers of the Batch API tests: write an input file, wait for a status, check the exactly-once contract."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openai import APIConnectionError, APIStatusError, OpenAI
from openai.types import Batch

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
WAIT_S = 300  # a deadline against hangs, not a timing


def embedding_lines(n: int, model: str, prefix: str = "r") -> list[dict[str, Any]]:
    def text(i: int) -> str:
        return f"line {i}: the number {i * 7919 % 1000} is {'odd' if i % 2 else 'even'}"

    return [{"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": model, "input": text(i), "encoding_format": "float"}} for i in range(n)]


def write_lines(path: Path, lines: list[dict[str, Any]] | list[str]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def start_batch(client: OpenAI, path: Path, endpoint: str = "/v1/embeddings") -> Batch:
    with path.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window="24h")


def wait_for(client: OpenAI, batch_id: str, done: Callable[[Batch], bool], timeout_s: float = WAIT_S,
             seen: list[str] | None = None) -> Batch:
    """Poll until `done(batch)`; `seen` collects every status observed, in order."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
        except (APIConnectionError, APIStatusError) as exc:  # a process or Redis restarting
            if (isinstance(exc, APIStatusError) and exc.status_code < 500) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        if seen is not None and (not seen or seen[-1] != batch.status):
            seen.append(batch.status)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} stuck: {batch}")
        time.sleep(0.05)


def wait_final(client: OpenAI, batch_id: str, timeout_s: float = WAIT_S) -> Batch:
    return wait_for(client, batch_id, lambda b: b.status in FINAL, timeout_s)


def started(batch: Batch) -> bool:
    """Some lines are done (or it ended already)."""
    counts = batch.request_counts
    return batch.status in FINAL or (counts is not None and counts.completed + counts.failed > 0)


def file_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x]


def check_exactly_once(client: OpenAI, batch: Batch, custom_ids: list[str]) -> tuple[list[Any], list[Any]]:
    """Output + error files hold every custom_id once; the counts match the files."""
    out = file_lines(client, batch.output_file_id)
    err = file_lines(client, batch.error_file_id)
    got = [x["custom_id"] for x in out + err]
    assert len(got) == len(set(got)), "a custom_id appears twice"
    assert sorted(got) == sorted(custom_ids)
    counts = batch.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (len(custom_ids), len(out), len(err))
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    return out, err
