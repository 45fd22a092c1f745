"""Batch input lines -> worker jobs, and finished jobs -> output or error lines, per endpoint.

Requests are the same pydantic models the interactive routes use, so a batch line and an HTTP call
with the same body give the same answer. Embedding lines are grouped: one job carries the inputs of
many lines (same model, dimensions and input kind), so the worker's micro-batches are full; the
answer is split back per line. Chat and rerank lines are one job each.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from api.deltas import join_deltas
from api.schemas.chat import ChatCompletionRequest, ChatFormat
from api.schemas.embeddings import EmbeddingRequest
from api.schemas.rerank import RerankRequest
from api.token_ids import reader
from common import keys
from common.errors import EngineFailure, InvalidRequest, ServiceError, ValidationFailed
from common.protocol import Job, Message, ModelType, new_request_id
from common.settings import Settings

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line number in the input file
    offset: int  # byte offset of the line
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Planned:
    job: Job
    lines: list[list[int]]  # [[line number, offset], ...] in the order of the job's inputs


@dataclass(frozen=True)
class Outcome:
    line: int
    ok: bool  # output file (True) or error file
    data: bytes  # one JSONL line


def _line(number: int, offset: int, raw: bytes) -> Line:
    obj = orjson.loads(raw)
    return Line(number, offset, str(obj["custom_id"]), obj.get("body") or {})


def read_lines(path: Path, number: int, offset: int, max_lines: int) -> tuple[list[Line], int, int, bool]:
    """Up to `max_lines` (validated, non-blank) lines from line `number` at byte `offset`.
    Returns the lines, the cursor after them, and whether the end of the file was reached."""
    out: list[Line] = []
    with path.open("rb") as fh:
        fh.seek(offset)
        while len(out) < max_lines:
            raw = fh.readline()
            if not raw:
                return out, number, offset, True
            if raw.strip():
                out.append(_line(number, offset, raw))
            number, offset = number + 1, offset + len(raw)
        return out, number, offset, fh.read(1) == b""


def read_at(path: Path, refs: list[list[int]]) -> list[Line]:
    """The lines at these [[number, offset], ...]."""
    with path.open("rb") as fh:
        out = []
        for number, offset in refs:
            fh.seek(offset)
            out.append(_line(number, offset, fh.readline()))
        return out


# --- output and error lines (OpenAI's batch output format) ---

def _line_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def ok_line(line: Line, request_id: str, body: dict[str, Any]) -> Outcome:
    data = orjson.dumps({"id": _line_id(), "custom_id": line.custom_id,
                         "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None})
    return Outcome(line.number, True, data + b"\n")


def error_line(line: Line, request_id: str | None, exc: ServiceError) -> Outcome:
    """A request that got an HTTP error: its status and body, and `error` {code, message}."""
    response = {"status_code": exc.status, "request_id": request_id, "body": exc.body()}
    data = orjson.dumps({"id": _line_id(), "custom_id": line.custom_id, "response": response,
                         "error": {"code": exc.code or exc.err_type, "message": exc.message}})
    return Outcome(line.number, False, data + b"\n")


def unfinished_line(line: Line, code: str, message: str) -> Outcome:
    """A request never run (the batch expired or was cancelled first): no response."""
    data = orjson.dumps({"id": _line_id(), "custom_id": line.custom_id, "response": None,
                         "error": {"code": code, "message": message}})
    return Outcome(line.number, False, data + b"\n")


def parse(model: type[M], body: dict[str, Any]) -> M:
    """A line's body as a request model; a 422 like the HTTP route's when it has the wrong shape."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed.from_errors(exc.errors()) from exc


# --- endpoints ---

class Endpoint(ABC):
    model_type: ModelType

    def __init__(self, settings: Settings, deadline_ms: int) -> None:
        self.settings = settings
        self.deadline_ms = deadline_ms  # the batch's expiry (and a grace): past it workers drop the job

    @abstractmethod
    def plan(self, lines: list[Line]) -> tuple[list[Planned], list[Outcome]]:
        """Jobs for these lines, and error lines for those whose body is not a valid request."""

    @abstractmethod
    def render(self, job_id: str, lines: list[Line], messages: list[Message]) -> list[Outcome]:
        """Output lines of a job that succeeded (`messages` ends with its terminal message)."""

    def _timeout_s(self) -> float:
        return self.settings.request_timeout_s

    def _job_per_line(self, lines: list[Line], job_of: Callable[[Line], Job]) -> tuple[list[Planned], list[Outcome]]:
        """One job per line (chat, rerank), due by the batch's deadline; a bad line becomes an error line."""
        jobs, errors = [], []
        for line in lines:
            try:
                job = replace(job_of(line), deadline_ms=self.deadline_ms)
            except ServiceError as exc:
                errors.append(error_line(line, None, exc))
                continue
            jobs.append(Planned(job, [[line.number, line.offset]]))
        return jobs, errors


class Embeddings(Endpoint):
    model_type = ModelType.EMBEDDING

    def plan(self, lines: list[Line]) -> tuple[list[Planned], list[Outcome]]:
        jobs: list[Planned] = []
        errors: list[Outcome] = []
        groups: dict[tuple[str, int | None, bool], list[tuple[Line, list[Any]]]] = {}
        read_ids = reader(self.settings.embedding_token_ids)  # token ids mean what they mean on /v1/embeddings
        for line in lines:
            try:
                request = parse(EmbeddingRequest, line.body)
                inputs: list[Any] = request.inputs(self.settings.max_inputs_per_request, read_ids)
            except ServiceError as exc:
                errors.append(error_line(line, None, exc))
                continue
            key = (request.model, request.dimensions, isinstance(inputs[0], list))
            group = groups.setdefault(key, [])
            group.append((line, inputs))
            if sum(len(i) for _, i in group) >= self.settings.batch_job_inputs:
                jobs.append(self._job(key, groups.pop(key)))
        jobs += [self._job(key, group) for key, group in groups.items()]
        return jobs, errors

    def _job(self, key: tuple[str, int | None, bool], group: list[tuple[Line, list[Any]]]) -> Planned:
        model, dimensions, _ = key
        job_id = new_request_id("batch-emb")
        payload = {"input": [x for _, inputs in group for x in inputs], "dimensions": dimensions}
        job = Job(id=job_id, kind=str(self.model_type), model=model, reply_to=keys.result_stream(job_id),
                  payload=payload, deadline_ms=self.deadline_ms)
        return Planned(job, [[line.number, line.offset] for line, _ in group])

    def render(self, job_id: str, lines: list[Line], messages: list[Message]) -> list[Outcome]:
        body = messages[-1].body
        data, tokens = body["data"], body.get("tokens")
        out, start = [], 0
        for line in lines:
            request = parse(EmbeddingRequest, line.body)
            count = len(request.inputs(self.settings.max_inputs_per_request))
            used = sum(tokens[start:start + count]) if tokens else int(body["prompt_tokens"]) * (len(lines) == 1)
            out.append(ok_line(line, job_id, request.response({"data": data[start:start + count],
                                                                "prompt_tokens": used})))
            start += count
        if start != len(data):
            raise EngineFailure(f"the worker answered {len(data)} vectors for {start} inputs")
        return out


class ChatCompletions(Endpoint):
    model_type = ModelType.CHAT

    def plan(self, lines: list[Line]) -> tuple[list[Planned], list[Outcome]]:
        return self._job_per_line(lines, self._job)

    def _job(self, line: Line) -> Job:
        request = parse(ChatCompletionRequest, line.body)
        request.check(self.settings.chat_max_n)
        if request.stream:
            raise InvalidRequest("'stream' is not supported in a batch", param="stream")
        return request.to_job(self._timeout_s())

    def render(self, job_id: str, lines: list[Line], messages: list[Message]) -> list[Outcome]:
        (line,) = lines
        request = parse(ChatCompletionRequest, line.body)
        usage = messages[-1].body.get("usage", {})
        fmt = ChatFormat(job_id, request.model, int(time.time()))
        body = fmt.response(join_deltas(messages), usage)
        return [ok_line(line, job_id, body)]


class Rerank(Endpoint):
    model_type = ModelType.RERANKER

    def plan(self, lines: list[Line]) -> tuple[list[Planned], list[Outcome]]:
        return self._job_per_line(lines, self._job)

    def _job(self, line: Line) -> Job:
        request = parse(RerankRequest, line.body)
        if not request.model:
            raise InvalidRequest("'model' is required in a batch", param="model")
        return request.to_job(request.model, self.settings.rerank_max_documents, self._timeout_s())

    def render(self, job_id: str, lines: list[Line], messages: list[Message]) -> list[Outcome]:
        (line,) = lines
        request = parse(RerankRequest, line.body)
        model = request.model or ""
        job = Job(id=job_id, kind=str(self.model_type), model=model, reply_to="", payload={})
        return [ok_line(line, job_id, request.response(job, messages[-1].body, "1"))]


ENDPOINT_CLASSES: dict[str, type[Endpoint]] = {
    "/v1/embeddings": Embeddings, "/v1/chat/completions": ChatCompletions, "/v1/rerank": Rerank}
