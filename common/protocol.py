"""The wire protocol between API and worker: a versioned job envelope and result messages.

Everything on Redis is msgpack (bytes stay bytes: embeddings travel as little-endian float32).
Never pickle. A message with an unknown version is refused, not guessed at. A field added later is
optional (it has a default and old messages without it decode); WIRE_VERSION changes only when a
message would be misread by the other side.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from common.errors import ServiceError

WIRE_VERSION = 1
DATA_FIELD = b"d"
# Beside DATA_FIELD on result-stream entries: which run of the job wrote it (worker id and process), so
# a reader that gathers a job's deltas can start over when a restarted worker runs the job again.
ATTEMPT_FIELD = b"a"


class WireError(ValueError):
    """A message that is not valid for this wire version."""


class ModelType(StrEnum):
    """What a model folder serves; also the name of its job stream (`llm:jobs:{type}`)."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANKER = "reranker"


class MessageKind(StrEnum):
    RESULT = "result"  # final payload of a non-streaming job
    DELTA = "delta"  # one streamed chunk (chat tokens)
    DONE = "done"  # end of a stream; may carry usage
    ERROR = "error"  # terminal failure, with an HTTP status and an OpenAI error body


TERMINAL_KINDS = frozenset({MessageKind.RESULT, MessageKind.DONE, MessageKind.ERROR})


def now_ms() -> int:
    return int(time.time() * 1000)


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def pack(obj: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb({"v": WIRE_VERSION, **obj}, use_bin_type=True)
    return data


def unpack(data: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable message: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version: {obj.get('v') if isinstance(obj, dict) else None}")
    return obj


@dataclass(frozen=True)
class Job:
    """What the API puts on a job stream. `payload` is endpoint-specific and msgpack-safe."""

    id: str
    kind: str  # model type: chat | embedding | reranker
    model: str
    reply_to: str  # result stream key
    payload: dict[str, Any]
    created_ms: int = field(default_factory=now_ms)
    deadline_ms: int = 0  # 0 = none
    request_id: str | None = None  # the HTTP request's X-Request-ID, for the worker's logs (None: unknown)

    def encode(self) -> bytes:
        return pack({"t": "job", **asdict(self)})

    @classmethod
    def decode(cls, data: bytes) -> Job:
        obj = unpack(data)
        try:
            return cls(
                id=str(obj["id"]),
                kind=str(obj["kind"]),
                model=str(obj["model"]),
                reply_to=str(obj["reply_to"]),
                payload=dict(obj["payload"]),
                created_ms=int(obj["created_ms"]),
                deadline_ms=int(obj["deadline_ms"]),
                request_id=str(obj["request_id"]) if obj.get("request_id") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed job: {exc!r}") from exc


@dataclass(frozen=True)
class Message:
    """One entry of a result stream."""

    kind: MessageKind
    body: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    def encode(self) -> bytes:
        return pack({"t": str(self.kind), "body": self.body})

    @classmethod
    def decode(cls, data: bytes) -> Message:
        obj = unpack(data)
        try:
            return cls(kind=MessageKind(obj["t"]), body=dict(obj["body"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed message: {exc!r}") from exc

    @classmethod
    def error(cls, exc: ServiceError) -> Message:
        return cls(MessageKind.ERROR, exc.wire())
