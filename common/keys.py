"""Every Redis key and stream name the service uses, and nothing else."""

from __future__ import annotations

PREFIX = "llm:"

# Job streams, one per model (`llm:jobs:{type}:{model}`), read through one consumer group by the workers that
# serve that model (worker/policy/cluster.py); each has a lower-priority lane for the Batch API,
# `llm:jobs-batch:{type}:{model}`, read only while no interactive job of the model waits.
JOB_STREAM_PREFIX = PREFIX + "jobs:"
BATCH_LANE_PREFIX = PREFIX + "jobs-batch:"
WORKER_GROUP = "workers"
# A worker about to load a model no worker holds (or a second copy of a hot one) takes this lease first, so that
# two workers never start the same load at once; it lasts while the load runs.
LOAD_LEASE_PREFIX = PREFIX + "lease:load:"

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

ADMIN_STREAM = PREFIX + "admin"  # admin commands (load, unload, rescan) every worker reads, without a group
ADMIN_STREAM_MAXLEN = 1_000
PINS = PREFIX + "pins"  # hash: model id -> "1" pinned / "0" unpinned by an admin (overrides LLM_PINNED_MODELS)

# Batch API (api/batches/). Per batch: a hash (the batch object and its progress), `:done` (bitmap of finished
# input lines), `:jobs` (hash of the batch's jobs in flight) and `:lease` (which process drives it now).
BATCH_PREFIX = PREFIX + "batch:"
BATCH_INDEX = PREFIX + "batches"  # sorted set: batch ids by creation time (ms)
BATCH_ACTIVE = PREFIX + "batches:active"  # set: batches not yet completed, failed, expired or cancelled
# arq's queue (the batch lifecycle jobs); arq's own keys use its fixed prefix `arq:`.
ARQ_QUEUE = PREFIX + "arq:queue"


def job_stream(model_type: str, model: str) -> str:
    return f"{JOB_STREAM_PREFIX}{model_type}:{model}"


def batch_stream(model_type: str, model: str) -> str:
    return f"{BATCH_LANE_PREFIX}{model_type}:{model}"


def job_streams(model_type: str, model: str) -> tuple[str, str]:
    """A model's two streams: interactive, then its batch lane."""
    return job_stream(model_type, model), batch_stream(model_type, model)


def is_batch_stream(stream: str) -> bool:
    return stream.startswith(BATCH_LANE_PREFIX)


def parse_job_stream(stream: str) -> tuple[str, str, bool]:
    """(model type, model id, batch lane?) of a job stream's name (model ids may hold ':', types do not)."""
    batch = is_batch_stream(stream)
    model_type, _, model = stream.removeprefix(BATCH_LANE_PREFIX if batch else JOB_STREAM_PREFIX).partition(":")
    return model_type, model, batch


def load_lease(model: str) -> str:
    return LOAD_LEASE_PREFIX + model


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


# Responses API (api/doors/): each stored response (`store`, the default) with the conversation that led to it, for
# `previous_response_id` and `GET /v1/responses/{id}`; it expires after LLM_RESPONSES_TTL_S.
RESPONSE_PREFIX = PREFIX + "response:"


def response_key(response_id: str) -> str:
    return RESPONSE_PREFIX + response_id
