"""One Settings object, read from `LLM_*` environment variables and passed down.

Nothing reads the environment at import time: call `Settings()` once at a process entry point.
Every field is documented in README.md (keep the two in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.discovery import LoadPolicy

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore", frozen=True)

    # --- where things are ---
    models_dir: Path = Field(Path("./models"), description="Folder of model folders (HF layout).")
    default_models: bool = Field(
        True, description="Serve the packaged all-MiniLM-L6-v2 as `all-minilm-l6-v2` when the models folder has none.")
    models_rescan_s: float = Field(30.0, gt=0.0, description="How often the worker rescans the models folder.")
    data_dir: Path = Field(Path("./data"), description="Batch files and embedded Redis data.")
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(15530, ge=1, le=65535, description="API port.")
    redis_url: str | None = Field(
        None, description="Redis URL. Unset: `serve` starts an embedded redis-server."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="Log lines: text, or JSON objects.")

    # --- GPU memory budget and placement ---
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="Worker device.")
    cuda_visible_devices: str | None = Field(
        None, description="GPUs of this machine's workers: `serve` starts one worker per GPU (e.g. 0,1).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    available_gpu_memory_gb: float | None = Field(None, gt=0.0)
    enable_gpu_memory_offload: bool = True
    gpu_memory_offload_threshold_gb: float = Field(4.0, ge=0.0)
    cpu_cache_gb: float = Field(8.0, ge=0.0, description="CPU memory for parked (evicted) models.")
    model_cache_size: int = Field(1, ge=1, description="Resident models per type.")
    auto_unload_models: bool = True
    model_idle_ttl_s: float = Field(300.0, gt=0.0)
    switch_starvation_s: float = Field(
        30.0, gt=0.0, description="A job waiting this long for another model forces a switch."
    )
    pinned_models: str = Field("", description="Comma-separated model ids kept resident (never evicted).")
    load_retry_backoff_s: float = Field(30.0, gt=0.0, description="Wait before retrying a failed load.")
    replica_after_s: float = Field(
        10.0, gt=0.0, description="A model's oldest job older than this: another worker with room loads a copy.")

    # --- vLLM (chat) ---
    chat_engine: Literal["auto", "vllm", "transformers"] = "auto"
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_dtype: str = "auto"
    vllm_max_model_len: int | None = Field(None, ge=16)
    vllm_enforce_eager: bool | None = Field(
        None, description="Skip vLLM's graph compilation; unset: on a CPU only (starts in seconds).")
    vllm_in_process: bool | None = Field(
        None, description="vLLM's engine in the worker process; unset: on a CPU only (no 25 s process start).")
    vllm_handover_after_s: float = Field(
        0.0, ge=0.0, description="An in-process chat model busy this long moves to vLLM's processes; 0: never.")
    vllm_kv_cache_gb: float | None = Field(None, gt=0.0)
    chat_max_n: int = Field(16, ge=1, description="Largest `n` (choices per request).")

    # --- embeddings ---
    embedding_batch_tokens: int | None = Field(
        None, ge=64, description="Padded tokens per micro-batch; default 4096 on CPU, 65536 on a GPU.")
    embedding_compile: bool = Field(False, description="torch.compile each layer of embedding models on CUDA.")
    embedding_max_batch_size: int = Field(256, ge=1)
    embedding_truncate: bool = Field(True, description="Truncate over-long inputs (else 400).")
    embedding_token_ids: Literal["cl100k", "model"] = Field(
        "cl100k", description="Token-id inputs: OpenAI's cl100k_base ids (decoded to text), or the model's own.")
    max_inputs_per_request: int = Field(2048, ge=1)

    cpu_compute_lanes: int = Field(
        2, ge=1, description="On a CPU, embedding and rerank batches computed at once, the cores shared among them.")
    packed_batches: bool | None = Field(
        None, description="Padding-free batches (each model checked at load); unset: embeddings on a CPU only.")

    # --- rerank ---
    rerank_batch_tokens: int | None = Field(
        None, ge=64, description="Padded tokens per rerank micro-batch; default 4096 on CPU, 65536 on a GPU.")
    rerank_max_batch_size: int = Field(128, ge=1, description="(query, document) pairs per micro-batch.")
    rerank_max_documents: int = Field(1000, ge=1, description="Documents per rerank request.")
    rerank_max_tokens_per_doc: int = Field(8192, ge=1, description="Tokens of one document (or the query).")

    # --- batch API ---
    batch_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="Size of an uploaded file.")
    batch_max_lines: int = Field(50_000, ge=1, description="Lines (requests) of an uploaded file.")
    batch_completion_window_s: float = Field(
        86_400.0, gt=0.0, description="How long `completion_window: 24h` lasts (shorter for tests).")
    batch_window_lines: int = Field(1024, ge=1, description="Lines of one batch in flight at once.")
    batch_job_inputs: int = Field(256, ge=1, description="Embedding inputs grouped into one batch job.")

    # --- transport ---
    request_timeout_s: float = Field(600.0, gt=0.0)
    result_ttl_s: int = Field(300, ge=5, description="Expiry of per-request result streams.")
    responses_ttl_s: int = Field(
        30 * 86_400, ge=1, description="How long a stored Responses API response (and its conversation) is kept.")
    worker_heartbeat_s: float = Field(1.0, gt=0.0, description="A worker is dead after 3 missed beats.")
    max_deliveries: int = Field(3, ge=1, description="Deliveries before a job is dead-lettered.")
    max_queued_jobs: int = Field(10_000, ge=1, description="Waiting jobs per model type before 429.")
    trust_remote_code: bool = Field(False, description="Allow model folders that need remote code.")
    allow_pickle_weights: bool = Field(False, description="Allow folders with only pickle (.bin/.pt) weights.")
    api_keys: str = Field("", description="Comma-separated Bearer keys; empty = open.")
    admin_api_keys: str = Field("", description="Comma-separated keys for /admin/ routes.")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Request body size of JSON endpoints.")
    debug_slow_on: str | None = Field(
        None, description="Tests only: jobs containing this take their deltas (or micro-batches) 20 ms apart.")
    debug_oom_tokens: int = Field(
        0, ge=0, description="Fault injection (drill 12): a batch over this many padded tokens raises out of memory.")
    debug_crash_on: str | None = Field(None, description="Tests only: the worker exits on a job containing this.")
    worker_id: str | None = Field(None, description="Consumer name; default host-pid.")

    @field_validator("vllm_dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        allowed = {"auto", "float32", "float16", "bfloat16", "half", "float", "fp32", "fp16", "bf16"}
        if value not in allowed:
            raise ValueError(f"must be one of {sorted(allowed)}")
        return value

    @property
    def pinned_model_ids(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.pinned_models.split(",") if m.strip())

    @property
    def load_policy(self) -> LoadPolicy:
        return LoadPolicy(self.trust_remote_code, self.allow_pickle_weights)

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

