"""Validation of a batch's input file: every line checked before any runs, as OpenAI does.

A line must be a JSON object with a unique non-empty `custom_id`, `method` POST, `url` equal to the
batch's endpoint, and an object `body` naming a `model` that a worker serves with the endpoint's
type. Any failure fails the whole batch (status `failed`) with `errors.data[]` = {code, message,
param, line} (1-based line numbers; at most MAX_ERRORS). Whether the body is a valid request is
checked when the line runs: a bad body becomes that line's 4xx in the error file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from api.directory import ModelDirectory
from common.errors import InvalidRequest, ModelNotFound
from common.protocol import ModelType

MAX_ERRORS = 1000
_REQUIRED = ("custom_id", "method", "url", "body")


@dataclass
class Scan:
    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, list[int]] = field(default_factory=dict)  # model -> the lines naming it


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check(obj: Any, endpoint: str, seen: set[str]) -> tuple[str, str, str | None] | str:
    """The line's problem as (code, message, param), or its model when it has none."""
    if not isinstance(obj, dict):
        return "invalid_json_line", "the line is not a JSON object", None
    for name in _REQUIRED:
        if name not in obj:
            return "missing_required_parameter", f"the line has no '{name}'", name
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return "invalid_custom_id", "'custom_id' must be a non-empty string", "custom_id"
    if custom_id in seen:
        return "duplicate_custom_id", f"the custom_id '{custom_id}' is used by an earlier line", "custom_id"
    seen.add(custom_id)
    if obj["method"] != "POST":
        return "invalid_method", f"'method' must be POST (got {obj['method']!r})", "method"
    if obj["url"] != endpoint:
        return "mismatched_endpoint", f"the url {obj['url']!r} is not the batch's endpoint '{endpoint}'", "url"
    body = obj["body"]
    if not isinstance(body, dict):
        return "invalid_body", "'body' must be a JSON object", "body"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "missing_required_parameter", "the body has no 'model'", "body.model"
    return model


def scan_input(path: Path, endpoint: str, max_lines: int) -> Scan:
    """Read the file once, line by line (blocking: run it in a thread)."""
    scan, seen = Scan(), set[str]()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            scan.total += 1
            try:
                result = _check(orjson.loads(raw), endpoint, seen)
            except orjson.JSONDecodeError:
                result = ("invalid_json_line", "the line is not valid JSON", None)
            if isinstance(result, str):
                scan.models.setdefault(result, []).append(number)
            elif len(scan.errors) < MAX_ERRORS:
                scan.errors.append(_error(*result[:2], number, result[2]))
    if scan.total == 0:
        scan.errors.append(_error("empty_file", "the input file has no requests", None))
    elif scan.total > max_lines:
        scan.errors.append(_error("too_many_requests", f"the input file has {scan.total} requests; "
                                                       f"at most {max_lines} are allowed", None))
    return scan


async def check_models(directory: ModelDirectory, scan: Scan, model_type: ModelType) -> list[dict[str, Any]]:
    """Errors for the lines naming a model no worker serves with this type (Unavailable: no worker yet)."""
    errors = []
    for model, lines in scan.models.items():
        try:
            await directory.resolve(model, model_type)
        except (ModelNotFound, InvalidRequest) as exc:
            code = exc.code or "model_not_found"
            errors += [_error(code, exc.message, line, "body.model") for line in lines]
    return errors


def all_errors(scan: Scan, model_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    errors = sorted(scan.errors + model_errors, key=lambda e: e["line"] or 0)
    return errors[:MAX_ERRORS]
