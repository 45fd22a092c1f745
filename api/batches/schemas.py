"""The Batch API's shapes: the create request, the batch's state as stored in Redis, the OpenAI batch object."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import ConfigDict, Field, StrictStr

from api.schemas.base import ApiRequest
from common.protocol import ModelType

# The endpoints a batch may target, and the model type each needs.
ENDPOINTS: dict[str, ModelType] = {
    "/v1/embeddings": ModelType.EMBEDDING,
    "/v1/chat/completions": ModelType.CHAT,
    "/v1/rerank": ModelType.RERANKER,
}
MAX_METADATA_PAIRS = 16


class Status(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED})
# Entering a status stamps its timestamp field.
STAMP = {Status.IN_PROGRESS: "in_progress_at", Status.FINALIZING: "finalizing_at",
         Status.COMPLETED: "completed_at", Status.FAILED: "failed_at", Status.EXPIRED: "expired_at",
         Status.CANCELLING: "cancelling_at", Status.CANCELLED: "cancelled_at"}


class CreateBatchRequest(ApiRequest):
    model_config = ConfigDict(extra="ignore")

    input_file_id: StrictStr = Field(min_length=1)
    endpoint: Literal["/v1/embeddings", "/v1/chat/completions", "/v1/rerank"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[StrictStr, StrictStr] | None = Field(None, max_length=MAX_METADATA_PAIRS)


# Fields of the batch hash: integers, strings, and JSON (errors, metadata).
_INT_FIELDS = ("created_at", "expires_at", *STAMP.values(), "total", "completed", "failed",
               "next_line", "next_offset", "out_bytes", "err_bytes")
_STR_FIELDS = ("id", "endpoint", "input_file_id", "completion_window", "status", "output_file_id",
               "error_file_id", "expiring")
_JSON_FIELDS = ("errors", "metadata")


@dataclass
class BatchState:
    """Everything Redis keeps about one batch (hash `llm:batch:{id}`), progress included."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    status: str = Status.VALIDATING
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str = ""
    error_file_id: str = ""
    expiring: str = ""  # "1" once the expiry sweep has found the window passed
    total: int = 0
    completed: int = 0
    failed: int = 0
    next_line: int = 1  # the first input line not yet sent (1-based), and its byte offset
    next_offset: int = 0
    out_bytes: int = 0  # committed sizes of the output and error files (their lines: completed, failed)
    err_bytes: int = 0
    stamps: dict[str, int] = field(default_factory=dict)

    @property
    def model_type(self) -> ModelType:
        return ENDPOINTS[self.endpoint]

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_fields(self) -> dict[str, str | int | bytes]:
        out: dict[str, str | int | bytes] = {}
        for name in _INT_FIELDS:
            value = self.stamps.get(name) if name in STAMP.values() else getattr(self, name)
            if value is not None:
                out[name] = int(value)
        for name in _STR_FIELDS:
            out[name] = str(getattr(self, name))
        for name in _JSON_FIELDS:
            out[name] = orjson.dumps(getattr(self, name))
        return out

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> BatchState:
        fields = {k.decode(): v for k, v in raw.items()}
        stamps = {name: int(fields[name]) for name in STAMP.values() if name in fields}
        values: dict[str, Any] = {n: int(fields[n]) for n in _INT_FIELDS if n in fields and n not in stamps}
        values.update({n: fields[n].decode() for n in _STR_FIELDS if n in fields})
        values.update({n: orjson.loads(fields[n]) for n in _JSON_FIELDS if n in fields})
        return cls(stamps=stamps, **values)

    def to_object(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        errors = {"object": "list", "data": self.errors} if self.errors else None
        obj: dict[str, Any] = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id or None,
            "error_file_id": self.error_file_id or None, "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
        obj.update({name: self.stamps.get(name) for name in STAMP.values()})
        obj["request_counts"] = {"total": self.total, "completed": self.completed, "failed": self.failed}
        obj["metadata"] = self.metadata
        return obj
