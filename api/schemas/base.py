"""What every request body must be before anything of it crosses to a worker: text that is valid Unicode and
integers the wire can carry. One check over the raw body, before the fields are validated, so it covers
free-form parts too (a JSON schema, metadata) and names the first offending field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator

from common.errors import InvalidRequest

# msgpack, the wire to the workers, carries integers in [-2**63, 2**64); the fields that mean a count, a size
# or a seed are bounded more tightly by their own request models.
WIRE_INT_MIN, WIRE_INT_MAX = -(2**63), 2**64 - 1
INT32_MAX = 2**31 - 1
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def _problem(value: Any) -> str | None:
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_unicode"
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not WIRE_INT_MIN <= value <= WIRE_INT_MAX:
        return "integer_out_of_range"
    return None


def first_unsafe(data: Any) -> tuple[str, str] | None:
    """(path, code) of the first string that is not valid Unicode (a lone surrogate such as "\\ud800", which JSON
    can spell) or integer too large for the wire, in a parsed JSON body; None when there is none."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                child = f"{path}.{key}" if path else str(key)
                problem = _problem(key)
                if problem is not None:
                    return path or "body", problem
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in reversed(list(enumerate(value))))
        else:
            problem = _problem(value)
            if problem is not None:
                return path or "body", problem
    return None


class ApiRequest(BaseModel):
    """Base of every request body: refuses, with a 400 naming the field, what could not cross to a worker."""

    @model_validator(mode="before")
    @classmethod
    def _wire_safe(cls, data: Any) -> Any:
        found = first_unsafe(data)
        if found is not None:
            path, code = found
            what = ("is not valid Unicode text (it holds a lone surrogate)" if code == "invalid_unicode"
                    else f"is an integer outside [{WIRE_INT_MIN}, {WIRE_INT_MAX}]")
            raise InvalidRequest(f"'{path}' {what}", param=path, code=code)
        return data


def check_token_ids(items: list[list[int]], vocab_size: int | None, param: str) -> None:
    """Token ids must name tokens of the model's vocabulary (400 naming the first that does not)."""
    if not vocab_size:
        return
    for i, ids in enumerate(items):
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            label = param if len(items) == 1 else f"{param}[{i}]"
            raise InvalidRequest(f"{label} holds token id {bad}; this model's vocabulary is [0, {vocab_size})",
                                 param=param, code="invalid_token_id")
