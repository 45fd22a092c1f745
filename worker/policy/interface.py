"""What the policy and the worker exchange: its configuration, the Effects it calls, refusals, status."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from common.settings import Settings
from worker.policy.planner import GIB, Placement
from worker.policy.states import ModelState


@dataclass(frozen=True)
class PolicyConfig:
    gpu_budget_bytes: int | None  # None: no GPU; only the per-type slots limit what is resident
    model_cache_size: int = 1  # resident models per type
    cpu_cache_bytes: int = 8 * GIB  # parked weights, all models together
    auto_unload: bool = True
    idle_ttl_s: float = 300.0
    starvation_s: float = 30.0
    retry_backoff_s: float = 30.0
    pinned: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, gpu_budget_bytes: int | None) -> PolicyConfig:
        return cls(
            gpu_budget_bytes=gpu_budget_bytes,
            model_cache_size=settings.model_cache_size,
            cpu_cache_bytes=int(settings.cpu_cache_gb * GIB),
            auto_unload=settings.auto_unload_models,
            idle_ttl_s=settings.model_idle_ttl_s,
            starvation_s=settings.switch_starvation_s,
            retry_backoff_s=settings.load_retry_backoff_s,
            pinned=frozenset(settings.pinned_model_ids),
        )


class RefusalCode(StrEnum):
    LOAD_FAILED = "model_load_failed"  # its last load failed; retried after the back-off
    TOO_LARGE = "model_too_large"  # it can never fit the budget (or next to the pinned models)
    NOT_FOUND = "model_not_found"  # not in the catalog (never was, or its folder went away)


@dataclass(frozen=True)
class Refusal:
    code: RefusalCode
    message: str


class Effects(Protocol):
    """What the policy asks of the worker. Each call starts work and returns at once."""

    def load(self, model_id: str, placement: Placement) -> None:
        """Load to ``placement`` (from the parked copy when there is one); then report
        ``loaded`` or ``load_failed``."""

    def cancel_load(self, model_id: str) -> None:
        """Nobody waits any more: stop (or finish) the load, free it, then report ``unloaded``."""

    def unload(self, model_id: str) -> None:
        """Free everything of the model (resident or parked copy); then report ``unloaded``."""

    def park(self, model_id: str) -> None:
        """Move the weights to CPU memory and free the GPU; then report ``unloaded(parked=True)``
        (``parked=False`` when parking failed and everything was freed)."""

    def serve(self, model_id: str, job_ids: list[str]) -> None:
        """Run these jobs (oldest first) on the loaded model; report each with ``job_done``."""

    def fail_waiters(self, model_id: str, job_ids: list[str], refusal: Refusal) -> None:
        """Answer these jobs with the error; the policy has already forgotten them."""


@dataclass(frozen=True)
class ModelStatus:
    state: ModelState
    pinned: bool
    waiting: int
    running: int
    error: str | None
    retry_at: float | None
    placement: Placement | None
    oldest_job: float | None = None  # enqueue time of its oldest unanswered job here
