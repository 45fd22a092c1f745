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

# Jobs that crashed workers too often (LLM_MAX_DELIVERIES), per model type, for inspection.
DEAD_LETTER_PREFIX = PREFIX + "dead:"
DEAD_LETTER_MAXLEN = 10_000

# Set when the caller of a request has gone (disconnect): the worker skips or aborts the job.
CANCEL_PREFIX = PREFIX + "cancel:"

# Worker registry: a set of worker ids, and per worker a heartbeat key holding its model catalog.
WORKERS_SET = PREFIX + "workers"
WORKER_PREFIX = PREFIX + "worker:"

# Batch API (api/batches/). Each job stream has a lower-priority lane, `llm:jobs:{type}:batch`, read
# through the same consumer group only while no interactive job waits.
ADMIN_STREAM = PREFIX + "admin"  # admin commands (load, unload) every worker reads, without a group
ADMIN_STREAM_MAXLEN = 1_000
PINS = PREFIX + "pins"  # hash: model id -> "1" pinned / "0" unpinned by an admin (overrides LLM_PINNED_MODELS)

BATCH_LANE_SUFFIX = ":batch"
# Per batch: a hash (the batch object and its progress), `:done` (bitmap of finished input lines),
# `:jobs` (hash of the batch's jobs in flight) and `:lease` (which process drives it now).
BATCH_PREFIX = PREFIX + "batch:"
BATCH_INDEX = PREFIX + "batches"  # sorted set: batch ids by creation time (ms)
BATCH_ACTIVE = PREFIX + "batches:active"  # set: batches not yet completed, failed, expired or cancelled
# arq's queue (the batch lifecycle jobs); arq's own keys use its fixed prefix `arq:`.
ARQ_QUEUE = PREFIX + "arq:queue"


def job_stream(model_type: str) -> str:
    return JOB_STREAM_PREFIX + model_type


def batch_stream(model_type: str) -> str:
    return job_stream(model_type) + BATCH_LANE_SUFFIX


def is_batch_stream(stream: str) -> bool:
    return stream.startswith(JOB_STREAM_PREFIX) and stream.endswith(BATCH_LANE_SUFFIX)


def batch_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def batch_done_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id + ":done"


def batch_jobs_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id + ":jobs"


def batch_lease_key(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id + ":lease"


def dead_letter_stream(model_type: str) -> str:
    return DEAD_LETTER_PREFIX + model_type


def result_stream(request_id: str) -> str:
    return RESULT_STREAM_PREFIX + request_id


def wake_stream(api_id: str) -> str:
    return WAKE_STREAM_PREFIX + api_id


def cancel_key(request_id: str) -> str:
    return CANCEL_PREFIX + request_id


def worker_key(worker_id: str) -> str:
    return WORKER_PREFIX + worker_id
