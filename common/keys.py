"""Every Redis key and stream name the service uses, and nothing else."""

from __future__ import annotations

PREFIX = "llm:"

# Job streams, one per model type, read by the workers through one consumer group.
JOB_STREAM_PREFIX = PREFIX + "jobs:"
WORKER_GROUP = "workers"

# Per-request result stream: the worker appends result/delta/error messages; the API reads it.
RESULT_STREAM_PREFIX = PREFIX + "res:"
RESULT_STREAM_MAXLEN = 100_000

# Per-API-process wake stream: written next to each enqueued job so the API's single blocking
# read loop picks up the new result stream at once.
WAKE_STREAM_PREFIX = PREFIX + "wake:"
WAKE_STREAM_MAXLEN = 1_000

# Set when the caller of a request has gone (disconnect): the worker skips or aborts the job.
CANCEL_PREFIX = PREFIX + "cancel:"

# Worker registry: a set of worker ids, and per worker a heartbeat key holding its model catalog.
WORKERS_SET = PREFIX + "workers"
WORKER_PREFIX = PREFIX + "worker:"


def job_stream(model_type: str) -> str:
    return JOB_STREAM_PREFIX + model_type


def result_stream(request_id: str) -> str:
    return RESULT_STREAM_PREFIX + request_id


def wake_stream(api_id: str) -> str:
    return WAKE_STREAM_PREFIX + api_id


def cancel_key(request_id: str) -> str:
    return CANCEL_PREFIX + request_id


def worker_key(worker_id: str) -> str:
    return WORKER_PREFIX + worker_id
