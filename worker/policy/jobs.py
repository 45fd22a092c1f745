"""The policy's view of the queue: which jobs wait for (or run on) which model, and since when.

The jobs themselves stay in the worker (and pending in Redis until answered); this book holds only
their ids, models and enqueue times, which is all the policy decides from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pressure:
    """How hard a model's queue pushes: jobs waiting and how long the oldest has waited."""

    waiting: int
    oldest_wait_s: float

    def starving(self, limit_s: float) -> bool:
        return self.waiting > 0 and self.oldest_wait_s >= limit_s


class JobBook:
    def __init__(self) -> None:
        self._waiting: dict[str, dict[str, float]] = {}  # model -> {job id: enqueued at}
        self._running: dict[str, set[str]] = {}  # model -> granted, not yet done
        self._model_of: dict[str, str] = {}
        self._since: dict[str, float] = {}  # every job's enqueue time, waiting or running

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._model_of

    def add(self, job_id: str, model_id: str, since: float) -> None:
        self._model_of[job_id] = model_id
        self._since[job_id] = since
        self._waiting.setdefault(model_id, {})[job_id] = since

    def remove(self, job_id: str) -> tuple[str, bool] | None:
        """Forget a job; (its model, whether it was running), or None when unknown."""
        model_id = self._model_of.pop(job_id, None)
        self._since.pop(job_id, None)
        if model_id is None:
            return None
        running = self._running.get(model_id, set())
        was_running = job_id in running
        running.discard(job_id)
        self._waiting.get(model_id, {}).pop(job_id, None)
        self._tidy(model_id)
        return model_id, was_running

    def grant(self, model_id: str) -> list[str]:
        """Move every waiting job of a model to running; their ids, oldest first."""
        waiting = self._waiting.pop(model_id, {})
        ids = sorted(waiting, key=waiting.__getitem__)
        self._running.setdefault(model_id, set()).update(ids)
        return ids

    def take_waiting(self, model_id: str) -> list[str]:
        """Remove (and return) every waiting job of a model: they are answered with an error."""
        waiting = self._waiting.pop(model_id, {})
        for job_id in waiting:
            del self._model_of[job_id]
            self._since.pop(job_id, None)
        return sorted(waiting, key=waiting.__getitem__)

    def waiting(self, model_id: str) -> int:
        return len(self._waiting.get(model_id, {}))

    def running(self, model_id: str) -> int:
        return len(self._running.get(model_id, ()))

    def busy(self, model_id: str) -> bool:
        return self.waiting(model_id) > 0 or self.running(model_id) > 0

    def oldest(self, model_id: str) -> float | None:
        waiting = self._waiting.get(model_id)
        return min(waiting.values()) if waiting else None

    def oldest_job(self, model_id: str) -> float | None:
        """Enqueue time of the model's oldest unanswered job, waiting or running."""
        ids = [*self._waiting.get(model_id, {}), *self._running.get(model_id, ())]
        return min((self._since[j] for j in ids), default=None)

    def pressure(self, model_id: str, now: float) -> Pressure:
        oldest = self.oldest(model_id)
        return Pressure(self.waiting(model_id), 0.0 if oldest is None else max(now - oldest, 0.0))

    def models_waiting(self) -> list[str]:
        return [m for m, jobs in self._waiting.items() if jobs]

    def _tidy(self, model_id: str) -> None:
        if not self._waiting.get(model_id, True):
            del self._waiting[model_id]
        if not self._running.get(model_id, True):
            del self._running[model_id]
