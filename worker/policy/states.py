"""Explicit model states, the table of allowed transitions, and the one place that applies them.

Every transition goes through :meth:`StateTable.move`: it is checked against :data:`ALLOWED`,
logged, counted (for metrics) and handed to an optional listener (to publish state changes).
A failed load keeps its error and the time before which it is not retried (exponential back-off).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

MAX_BACKOFF_FACTOR = 8  # the retry delay doubles per consecutive failure, up to 8 x the base


class ModelState(StrEnum):
    AVAILABLE = "available"  # on disk only
    LOADING = "loading"  # being read to its placement (from disk, or copied from its parked copy)
    LOADED = "loaded"  # resident at its placement, can serve
    PARKED = "parked"  # evicted from the GPU; its weights are kept in CPU memory for a warm switch back
    UNLOADING = "unloading"  # being freed (or parked); still holds its memory until done
    FAILED = "failed"  # the last load failed; retried after a back-off


S = ModelState
ALLOWED: Mapping[ModelState, frozenset[ModelState]] = {
    S.AVAILABLE: frozenset({S.LOADING}),
    S.LOADING: frozenset({S.LOADED, S.FAILED, S.UNLOADING}),  # UNLOADING: the load was cancelled
    S.LOADED: frozenset({S.UNLOADING}),
    S.UNLOADING: frozenset({S.AVAILABLE, S.PARKED}),
    S.PARKED: frozenset({S.LOADING, S.UNLOADING}),  # UNLOADING: the parked copy is dropped
    S.FAILED: frozenset({S.LOADING, S.AVAILABLE}),  # AVAILABLE: forgotten (e.g. the folder changed)
}


class InvalidTransition(ValueError):
    """A transition that :data:`ALLOWED` does not list: a bug in the caller."""


def retry_delay_s(base_s: float, failures: int) -> float:
    """Back-off before retrying a load that failed ``failures`` times in a row."""
    return base_s * min(1 << max(failures - 1, 0), MAX_BACKOFF_FACTOR)


@dataclass
class ModelRecord:
    state: ModelState = S.AVAILABLE
    since: float = 0.0  # when it entered `state`
    error: str | None = None  # the last load error (kept while FAILED)
    retry_at: float | None = None  # FAILED: not retried before this time
    failures: int = 0  # consecutive failed loads


Listener = Callable[[str, ModelState, ModelState, str], None]


class StateTable:
    """The state of every known model; the only code that changes it."""

    def __init__(self, retry_backoff_s: float, listener: Listener | None = None) -> None:
        self.retry_backoff_s = retry_backoff_s
        self.listener = listener
        self.counts: Counter[tuple[ModelState, ModelState]] = Counter()
        self._records: dict[str, ModelRecord] = {}

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records))

    def add(self, model_id: str, now: float) -> None:
        """Start tracking a model (AVAILABLE); a model already tracked is left alone."""
        self._records.setdefault(model_id, ModelRecord(since=now))

    def remove(self, model_id: str) -> None:
        """Stop tracking a model that holds no memory (AVAILABLE or FAILED)."""
        state = self.state(model_id)
        if state not in (S.AVAILABLE, S.FAILED):
            raise InvalidTransition(f"cannot forget {model_id!r} while {state}")
        del self._records[model_id]

    def record(self, model_id: str) -> ModelRecord:
        return self._records[model_id]

    def state(self, model_id: str) -> ModelState:
        return self._records[model_id].state

    def in_state(self, *states: ModelState) -> list[str]:
        return [m for m, r in self._records.items() if r.state in states]

    def move(self, model_id: str, to: ModelState, now: float, reason: str = "", error: str | None = None) -> None:
        """Apply one transition; raises InvalidTransition when the table does not allow it."""
        rec = self._records[model_id]
        old = rec.state
        if to not in ALLOWED[old]:
            raise InvalidTransition(f"model {model_id!r}: {old} -> {to} is not allowed")
        rec.state, rec.since = to, now
        if to is S.FAILED:
            rec.failures += 1
            rec.error = error or "load failed"
            rec.retry_at = now + retry_delay_s(self.retry_backoff_s, rec.failures)
        elif to is S.LOADED:
            rec.failures, rec.error, rec.retry_at = 0, None, None
        elif to is S.AVAILABLE:
            rec.error, rec.retry_at = None, None
        self.counts[(old, to)] += 1
        level = logging.WARNING if to is S.FAILED else logging.INFO
        log.log(level, "model %s: %s -> %s%s%s", model_id, old, to, f" ({reason})" if reason else "",
                f": {rec.error}" if to is S.FAILED else "")
        if self.listener is not None:
            self.listener(model_id, old, to, reason)
