"""Which models' job streams a worker reads, given what every worker publishes. Pure: the same view gives every
worker the same answer, so they agree without talking to each other.

Each model has its own job stream; only workers that read it get its jobs. A worker reads:

- the models it holds (loading or loaded) or holds the load lease of: affinity, a job goes where its model is;
- the models no other live worker can serve (only its catalog has them), whatever they cost;
- a cold model (held by nobody, jobs waiting) when it is the one worker the rule picks among those whose
  catalog has it: the cheapest to load there (a parked copy, then room to spare, then only idle models to
  evict, then busy ones), then the least busy, then the smallest id. Cold models are assigned oldest first,
  each assignment counting against the worker's room for the next, so two cold models go to two workers
  with room rather than thrash one. Should views disagree (heartbeats a beat apart), the load lease in Redis
  lets only one worker start the load; a cold model that has waited `claim_after_s` may be claimed by any
  candidate (the lease still picks one), so a disagreement never leaves it unserved;
- a hot model (held elsewhere, its oldest job older than `replica_after_s`) when it can load a copy without
  evicting busy work and the rule picks it among the workers that can: a replica. Idle unload removes it
  once the queue has drained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

HOLDING = frozenset({"loading", "loaded"})
PARKED = "parked"

# The cost of loading a model on a worker, cheapest first (None: it cannot, without evicting busy work).
WARM, ROOM, EVICT_IDLE, EVICT_BUSY = 0, 1, 2, 3


@dataclass(frozen=True)
class ModelOnWorker:
    """A model of a worker's catalog, as its heartbeat describes it."""

    type: str
    state: str = "available"
    gpu_bytes: int = 0  # its planned budget on that worker
    jobs: int = 0  # waiting for it or running on it there
    oldest_job_s: float = 0.0  # age of the oldest of those jobs


@dataclass(frozen=True)
class WorkerView:
    id: str
    models: Mapping[str, ModelOnWorker]  # its whole catalog
    budget_bytes: int | None = None  # None: no GPU, only the per-type slots limit it
    cache_size: int = 1  # resident models per type

    def holds(self, model: str) -> bool:
        found = self.models.get(model)
        return found is not None and found.state in HOLDING

    @property
    def jobs(self) -> int:
        return sum(m.jobs for m in self.models.values())


@dataclass(frozen=True)
class QueueView:
    """A model's jobs that no worker has read yet (both lanes)."""

    waiting: int = 0
    oldest_wait_s: float = 0.0


@dataclass(frozen=True)
class ClusterView:
    workers: Mapping[str, WorkerView]  # the live ones
    queues: Mapping[str, QueueView] = field(default_factory=dict)
    leases: Mapping[str, str] = field(default_factory=dict)  # model -> the worker loading it


@dataclass(frozen=True)
class ReadPlan:
    read: frozenset[str]  # models whose streams to read
    claims: Mapping[str, str]  # models to take the load lease of first ("cold" or "replica"); read once it is ours


def load_cost(worker: WorkerView, model: str, extra: Iterable[str] = ()) -> int:
    """How dear loading `model` on `worker` is, with `extra` models assigned to it beside what it holds."""
    target = worker.models[model]
    if target.state == PARKED:
        return WARM
    held = [m for m in worker.models if (worker.holds(m) or m in extra) and m != model]
    used = sum(worker.models[m].gpu_bytes for m in held)
    same_type = [m for m in held if worker.models[m].type == target.type]

    def fits(used_bytes: int, slots: int) -> bool:
        return slots < worker.cache_size and (worker.budget_bytes is None or
                                              used_bytes + target.gpu_bytes <= worker.budget_bytes)

    if fits(used, len(same_type)):
        return ROOM
    idle = [m for m in held if worker.models[m].jobs == 0 and m not in extra]
    idle_bytes = sum(worker.models[m].gpu_bytes for m in idle)
    if fits(used - idle_bytes, len([m for m in same_type if m not in idle])):
        return EVICT_IDLE
    return EVICT_BUSY


def plan_reading(view: ClusterView, me: str, replica_after_s: float, claim_after_s: float) -> ReadPlan:
    """What `me` reads and which loads it claims (see the module doc)."""
    mine = view.workers[me]
    read = {m for m in mine.models if mine.holds(m) or view.leases.get(m) == me}
    read |= {m for m in mine.models if _candidates(view, m) == [me]}
    claims: dict[str, str] = {}
    # What each worker will hold: its leased loads first (not loading yet, they already take its room), then the
    # cold models this pass assigns it.
    assigned: dict[str, set[str]] = {w: {m for m, holder in view.leases.items() if holder == w} for w in view.workers}
    for model in _cold(view):
        candidates = _candidates(view, model)
        best = min(candidates, key=lambda w: (load_cost(view.workers[w], model, assigned[w]),
                                              view.workers[w].jobs, w))
        assigned[best].add(model)
        late = view.queues[model].oldest_wait_s >= claim_after_s
        if me in candidates and (best == me or late) and model not in read:
            claims[model] = "cold"
    for model in sorted(mine.models):
        if model in read or model in claims or not _replica_wanted(view, model, replica_after_s):
            continue
        able = [w for w in _candidates(view, model) if not view.workers[w].holds(model)
                and load_cost(view.workers[w], model, assigned[w]) <= EVICT_IDLE]
        if able and min(able, key=lambda w: (view.workers[w].jobs, w)) == me:
            claims[model] = "replica"
    return ReadPlan(frozenset(read), claims)


def _candidates(view: ClusterView, model: str) -> list[str]:
    return sorted(w for w, worker in view.workers.items() if model in worker.models)


def _held(view: ClusterView, model: str) -> bool:
    return model in view.leases or any(w.holds(model) for w in view.workers.values())


def _cold(view: ClusterView) -> list[str]:
    """Models nobody holds (nor is loading) with jobs waiting, the longest-waiting first."""
    cold = [m for m, q in view.queues.items() if q.waiting > 0 and not _held(view, m) and _candidates(view, m)]
    return sorted(cold, key=lambda m: (-view.queues[m].oldest_wait_s, m))


def _replica_wanted(view: ClusterView, model: str, replica_after_s: float) -> bool:
    """Held somewhere, no copy being loaded right now, and its oldest job (in Redis or at a holder) too old."""
    holders = [w for w in view.workers.values() if w.holds(model)]
    if not holders or model in view.leases:
        return False
    oldest = max([view.queues.get(model, QueueView()).oldest_wait_s,
                  *(w.models[model].oldest_job_s for w in holders)])
    return oldest >= replica_after_s
