"""Logging for both processes: text or JSON lines, each stamped with the request id when one is known.

The API sets the request id per HTTP request (`api/observe.py`, `Observe`); it travels in the job
(`Job.request_id`) and the worker wraps each job's handling in `request_context(job.request_id)`, so
one grep for the id finds the request's lines in both processes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from common.settings import Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into JSON lines.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "request_id", "request_tag", "taskName", "color_message"}  # uvicorn's ANSI copy


@lru_cache(maxsize=4)
def _standard(factory: Callable[..., logging.LogRecord]) -> frozenset[str]:
    """_STANDARD plus what the current record factory adds to every record (vLLM installs one)."""
    return _STANDARD | frozenset(factory("", 0, "", 0, "", None, None).__dict__)


@contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Log lines (and tasks created) inside the block carry `request_id`."""
    token = request_id_var.set(request_id or None)
    try:
        yield
    finally:
        request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamps `record.request_id` from the context (unless the call passed one in `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [req=ID]: message` (the tag only when a request id is known)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [req={request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id (when known), exc_info, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        standard = _standard(logging.getLogRecordFactory())
        line.update((k, v) for k, v in record.__dict__.items() if k not in standard and not k.startswith("_"))
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler with the request id filter and the chosen formatter."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def setup_logging(settings: Settings) -> None:
    """Configure the root logger (replacing any handlers): `LLM_LOG_LEVEL`, `LLM_LOG_FORMAT`."""
    logging.basicConfig(level=settings.log_level, handlers=[make_handler(settings.log_format)], force=True)
