"""The scheduling policy: which models to load, evict, park and serve. Pure; acts through Effects.

The worker's run loop owns one :class:`Policy`. It reports events (a job waits, a job is done, a
load finished or failed, an unload finished, a pin, a catalog rescan, the clock ticking) and the
policy answers each by calling :class:`Effects` at once, from inside the call. Effects only *start*
work; the worker reports completion later with another event. Times are seconds on one clock, the
one the jobs' enqueue times use. See DESIGN.md for the policy and why it avoids thrash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from worker.policy.interface import Effects, ModelStatus, PolicyConfig, Refusal, RefusalCode
from worker.policy.jobs import JobBook, Pressure
from worker.policy.ledger import Ledger
from worker.policy.planner import GIB, Placement
from worker.policy.states import Listener, ModelState, StateTable

log = logging.getLogger(__name__)
S = ModelState


class Policy:
    def __init__(self, config: PolicyConfig, effects: Effects, listener: Listener | None = None) -> None:
        self.config = config
        self.effects = effects
        self.states = StateTable(config.retry_backoff_s, listener)
        self.jobs = JobBook()
        self.placements: dict[str, Placement] = {}
        self.pinned: set[str] = set(config.pinned)
        self._in_use: dict[str, Placement] = {}  # placement of each model holding memory (loading..unloading)
        self._parked_bytes: dict[str, int] = {}
        self._parking: set[str] = set()  # unloading into a parked copy
        self._removed: set[str] = set()  # gone from the catalog, still holding memory
        self._draining: set[str] = set()  # chosen for eviction: no new grants
        self._last_used: dict[str, float] = {}
        self._elsewhere: frozenset[str] = frozenset()  # models other live workers hold (the cluster view)
        self._deciding = False

    # ---- events (the worker calls these, one at a time, from its run loop) ----

    def set_models(self, placements: Mapping[str, Placement], now: float) -> None:
        """The catalog (after each rescan), with each model's planned placement."""
        self._guard()
        for model_id, placement in placements.items():
            self.placements[model_id] = placement
            self.states.add(model_id, now)
            self._removed.discard(model_id)
        for model_id in [m for m in self.states if m not in placements]:
            self.placements.pop(model_id, None)
            if self.states.state(model_id) in (S.AVAILABLE, S.FAILED):
                self._forget(model_id)
            else:
                self._removed.add(model_id)
        self._decide(now)

    def job_waiting(self, job_id: str, model_id: str, since: float, now: float) -> None:
        """A job for ``model_id``, enqueued at ``since``, waits to be served."""
        self._guard()
        if job_id not in self.jobs:
            self.jobs.add(job_id, model_id, since)
        self._decide(now)

    def job_done(self, job_id: str, now: float) -> None:
        """A job left: answered, cancelled or expired (waiting or running)."""
        self._guard()
        gone = self.jobs.remove(job_id)
        if gone is not None and gone[1]:
            self._last_used[gone[0]] = now
        self._decide(now)

    def loaded(self, model_id: str, now: float) -> None:
        self._guard()
        if model_id not in self.states or self.states.state(model_id) is not S.LOADING:
            log.info("model %s: load finished after it was cancelled; waiting for its unload", model_id)
            return
        self.states.move(model_id, S.LOADED, now)
        self._last_used[model_id] = now
        if self.jobs.waiting(model_id):  # a load always serves the jobs it was made for
            with self._acting():
                self.effects.serve(model_id, self.jobs.grant(model_id))
        self._decide(now)

    def load_failed(self, model_id: str, error: str, now: float) -> None:
        self._guard()
        if model_id not in self.states:
            return
        if self.states.state(model_id) is S.UNLOADING:  # cancelled meanwhile: nothing is left
            self._finish_unload(model_id, False, now)
        else:
            self._in_use.pop(model_id, None)
            self.states.move(model_id, S.FAILED, now, error=error)
            if self.jobs.waiting(model_id):  # they get the error, whatever the back-off
                refusal = Refusal(RefusalCode.LOAD_FAILED, f"model '{model_id}' failed to load: {error}")
                with self._acting():
                    self.effects.fail_waiters(model_id, self.jobs.take_waiting(model_id), refusal)
        self._decide(now)

    def unloaded(self, model_id: str, now: float, parked: bool = False, parked_bytes: int | None = None) -> None:
        """An unload (or park) finished; ``parked_bytes``: the host memory the parked copy really holds
        (default: its weights' size)."""
        self._guard()
        if model_id not in self.states or self.states.state(model_id) is not S.UNLOADING:
            log.warning("model %s: unexpected 'unloaded' event, ignored", model_id)
            return
        self._finish_unload(model_id, parked, now, parked_bytes)
        self._decide(now)

    def pin(self, model_id: str, now: float) -> None:
        """Keep a model resident: loaded when it fits, never evicted, never unloaded for idling."""
        self._guard()
        self.pinned.add(model_id)
        self._decide(now)

    def unpin(self, model_id: str, now: float) -> None:
        self._guard()
        self.pinned.discard(model_id)
        self._decide(now)

    def drop(self, model_id: str, now: float) -> bool:
        """Admin: unpin and unload a model now, resident or parked. False (nothing done) while jobs
        wait for it or run on it, or when it holds no memory."""
        self._guard()
        self.pinned.discard(model_id)
        state = self.states.state(model_id)
        done = state is S.PARKED or (state is S.LOADED and not self.jobs.busy(model_id))
        with self._acting():
            if state is S.PARKED:
                self._drop_parked(model_id, now, "admin unload")
            elif done:
                self._evict(model_id, now, "admin unload", park=False)
        self._decide(now)
        return done

    def set_elsewhere(self, models: frozenset[str], now: float) -> None:
        """The models other live workers hold (worker/policy/cluster.py). A job for one of them may be served
        here too (a replica), but never at the cost of busy work: such a target evicts only idle models."""
        self._guard()
        if models != self._elsewhere:
            self._elsewhere = models
            self._decide(now)

    def tick(self, now: float) -> None:
        """Time passed: starvation limits, idle unloads, back-offs. See :meth:`next_deadline`."""
        self._guard()
        self._decide(now)

    # ---- queries ----

    def state(self, model_id: str) -> ModelState:
        return self.states.state(model_id)

    def status(self) -> dict[str, ModelStatus]:
        out: dict[str, ModelStatus] = {}
        for model_id in self.states:
            rec = self.states.record(model_id)
            out[model_id] = ModelStatus(
                rec.state, model_id in self.pinned, self.jobs.waiting(model_id), self.jobs.running(model_id),
                rec.error, rec.retry_at, self._in_use.get(model_id, self.placements.get(model_id)),
                self.jobs.oldest_job(model_id))
        return out

    def next_deadline(self, now: float) -> float | None:
        """The next time at which :meth:`tick` may change something (None: only events will)."""
        times = [oldest + self.config.starvation_s
                 for m in self.jobs.models_waiting() if (oldest := self.jobs.oldest(m)) is not None]
        if self.config.auto_unload:
            times += [self._idle_since(m) + self.config.idle_ttl_s for m in self._idle_unloadable()]
        for model_id in self.pinned & set(self.states.in_state(S.FAILED)):
            retry_at = self.states.record(model_id).retry_at
            times += [] if retry_at is None else [retry_at]
        return min((t for t in times if t > now), default=None)

    # ---- decisions ----

    def _guard(self) -> None:
        if self._deciding:
            raise RuntimeError("an effect called the policy back; report completions later from the run loop")

    @contextmanager
    def _acting(self) -> Iterator[None]:
        """While the policy calls effects: an effect that calls back in is a bug (see _guard)."""
        self._deciding = True
        try:
            yield
        finally:
            self._deciding = False

    def _decide(self, now: float) -> None:
        with self._acting():
            self._refuse_hopeless(now)
            self._cancel_orphan_loads(now)
            self._plan_switches(now)
            self._evict_drained(now)
            self._grant()
            self._idle_unload(now)
            self._trim_parked(now)

    def _refuse_hopeless(self, now: float) -> None:
        """Answer at once the jobs of a model that cannot be loaded now: gone, backing off, too big."""
        for model_id in self.jobs.models_waiting():
            refusal = self._refusal(model_id, now)
            if refusal is not None:
                self.effects.fail_waiters(model_id, self.jobs.take_waiting(model_id), refusal)

    def _refusal(self, model_id: str, now: float) -> Refusal | None:
        if model_id not in self.placements or model_id in self._removed:
            return Refusal(RefusalCode.NOT_FOUND, f"The model '{model_id}' does not exist")
        if self.placements[model_id].error:  # the settings ask for what the model cannot be given
            return Refusal(RefusalCode.LOAD_FAILED, str(self.placements[model_id].error))
        rec = self.states.record(model_id)
        if rec.state is S.FAILED and rec.retry_at is not None and now < rec.retry_at:
            return Refusal(RefusalCode.LOAD_FAILED, f"model '{model_id}' failed to load: {rec.error} "
                           f"(next try in {rec.retry_at - now:.0f} s)")
        if rec.state in (S.AVAILABLE, S.PARKED, S.FAILED):
            reason = self._never_fits(model_id)
            if reason is not None:
                return Refusal(RefusalCode.TOO_LARGE, reason)
        return None

    def _never_fits(self, model_id: str) -> str | None:
        """Why the model can never be resident (too big, or the pinned models hold the room)."""
        placement = self.placements[model_id]
        ledger = Ledger(self.config.gpu_budget_bytes, self.config.model_cache_size)
        pins = sorted(m for m in self.states.in_state(S.LOADING, S.LOADED)
                      if m in self.pinned and m not in self._removed and m != model_id)
        for other in pins:
            ledger.hold(self._in_use[other])
        if ledger.fits_now(placement):
            return None
        budget = self.config.gpu_budget_bytes
        if budget is not None and not ledger.fits_alone(placement):
            return (f"model '{model_id}' needs {placement.gpu_bytes / GIB:.2f} GiB of GPU memory; "
                    f"the budget is {budget / GIB:.2f} GiB")
        return f"model '{model_id}' does not fit next to the pinned models {', '.join(pins)}"

    def _cancel_orphan_loads(self, now: float) -> None:
        for model_id in self.states.in_state(S.LOADING):
            wanted = model_id in self.pinned and model_id not in self._removed
            if self.jobs.waiting(model_id) == 0 and not wanted:
                self.states.move(model_id, S.UNLOADING, now, "load cancelled: no job waits for it")
                self.effects.cancel_load(model_id)

    def _plan_switches(self, now: float) -> None:
        """Load what the queue wants most, evicting only what may go (see DESIGN.md)."""
        self._draining = set()
        ledger = Ledger(self.config.gpu_budget_bytes, self.config.model_cache_size)
        for model_id, placement in self._in_use.items():
            ledger.hold(placement, leaving=self.states.state(model_id) is S.UNLOADING)
        for target in self._targets(now):
            placement = self.placements[target]
            victims = self._victims(target, placement, ledger, now)
            if victims is None:
                continue
            for victim in victims:
                ledger.release(self._in_use[victim])
                self._draining.add(victim)
            ledger.reserve(placement)
            if ledger.fits_now(placement):
                ledger.start(placement)
                self._start_load(target, placement, now)

    def _targets(self, now: float) -> list[str]:
        """Models to load, most wanted first: starving (oldest first), then most jobs waiting."""
        wanted = set(self.jobs.models_waiting()) | self.pinned
        limit = self.config.starvation_s

        def key(model_id: str) -> tuple[bool, float, float, str]:
            p = self.jobs.pressure(model_id, now)
            starving = p.starving(limit)
            return (not starving, -p.oldest_wait_s if starving else -p.waiting, -p.oldest_wait_s, model_id)

        return sorted((m for m in wanted if self._loadable(m, now)), key=key)

    def _loadable(self, model_id: str, now: float) -> bool:
        if model_id not in self.placements or model_id in self._removed or self.placements[model_id].error:
            return False
        rec = self.states.record(model_id)
        if rec.state is S.FAILED:
            return rec.retry_at is None or now >= rec.retry_at
        return rec.state in (S.AVAILABLE, S.PARKED)

    def _victims(self, target: str, placement: Placement, ledger: Ledger, now: float) -> list[str] | None:
        """Loaded models whose eviction makes room for ``target`` ([]: none needed, None: impossible)."""
        if ledger.fits_after(placement):
            return []
        if not ledger.fits_alone(placement):
            return None
        trial = ledger.copy()
        chosen: list[str] = []
        for victim in self._eviction_order(placement, self.jobs.pressure(target, now), ledger, now):
            trial.release(self._in_use[victim])
            chosen.append(victim)
            if trial.fits_after(placement):
                return self._prune(chosen, placement, ledger)
        return None

    def _prune(self, chosen: list[str], placement: Placement, ledger: Ledger) -> list[str]:
        """Drop the victims the others make unnecessary (greedy picks can over-evict)."""
        kept = list(chosen)
        for victim in chosen[:-1]:
            rest = [v for v in kept if v != victim]
            trial = ledger.copy()
            for other in rest:
                trial.release(self._in_use[other])
            if trial.fits_after(placement):
                kept = rest
        return kept

    def _eviction_order(self, placement: Placement, want: Pressure, ledger: Ledger, now: float) -> list[str]:
        """Evictable loaded models, best victim first: same type when a slot is needed, idle before
        busy, fewer waiting jobs, least recently used. Busy ones only for a starving target."""
        urgent = want.starving(self.config.starvation_s) and placement.model_id not in self._elsewhere
        slot_needed = ledger.count_after[placement.model_type] >= ledger.cache_size
        out: list[tuple[tuple[bool, bool, int, float], str]] = []
        for model_id in self.states.in_state(S.LOADED):
            if model_id in self._draining or model_id == placement.model_id or (
                    model_id in self.pinned and model_id not in self._removed):
                continue
            busy = self.jobs.busy(model_id)
            mine = self.jobs.pressure(model_id, now)
            if busy and (not urgent or (mine.waiting and mine.oldest_wait_s >= want.oldest_wait_s)):
                continue
            other_type = slot_needed and self._in_use[model_id].model_type is not placement.model_type
            out.append(((other_type, busy, mine.waiting, self._last_used.get(model_id, 0.0)), model_id))
        return [model_id for _, model_id in sorted(out)]

    def _start_load(self, model_id: str, placement: Placement, now: float) -> None:
        warm = self.states.state(model_id) is S.PARKED
        self.states.move(model_id, S.LOADING, now, "warm, from its parked copy" if warm else "from disk")
        self._in_use[model_id] = placement
        self._parked_bytes.pop(model_id, None)
        self.effects.load(model_id, placement)

    def _evict_drained(self, now: float) -> None:
        """Evict the chosen victims once their running jobs are done; unload removed models."""
        for model_id in sorted(self._draining):
            if self.jobs.running(model_id) == 0:
                self._evict(model_id, now, "switch", park=True)
        for model_id in sorted(self._removed):
            state = self.states.state(model_id)
            if state is S.LOADED and self.jobs.running(model_id) == 0:
                self._evict(model_id, now, "its folder went away", park=False)
            elif state is S.PARKED:
                self._drop_parked(model_id, now, "its folder went away")

    def _evict(self, model_id: str, now: float, reason: str, park: bool) -> None:
        placement = self._in_use[model_id]
        # Without a GPU a parked model keeps its engine in main memory: still no disk read to come back.
        park = park and placement.weight_bytes <= self.config.cpu_cache_bytes
        self._draining.discard(model_id)
        self.states.move(model_id, S.UNLOADING, now, f"{reason}, parking" if park else reason)
        if park:
            self._parking.add(model_id)
            self.effects.park(model_id)
        else:
            self.effects.unload(model_id)

    def _grant(self) -> None:
        for model_id in self.states.in_state(S.LOADED):
            if model_id not in self._draining and model_id not in self._removed and self.jobs.waiting(model_id):
                self.effects.serve(model_id, self.jobs.grant(model_id))

    def _idle_unload(self, now: float) -> None:
        if not self.config.auto_unload:
            return
        for model_id in self._idle_unloadable():
            if now - self._idle_since(model_id) < self.config.idle_ttl_s:
                continue
            if self.states.state(model_id) is S.LOADED:
                self._evict(model_id, now, "idle", park=False)
            else:
                self._drop_parked(model_id, now, "idle")

    def _idle_unloadable(self) -> list[str]:
        return [m for m in self.states.in_state(S.LOADED, S.PARKED)
                if m not in self.pinned and m not in self._draining and not self.jobs.busy(m)]

    def _idle_since(self, model_id: str) -> float:
        return self._last_used.get(model_id, self.states.record(model_id).since)

    def _trim_parked(self, now: float) -> None:
        """Keep parked copies (and those being parked) within the CPU cache; drop the oldest first."""
        used = sum(self._parked_bytes.values()) + sum(self._in_use[m].weight_bytes for m in self._parking)
        for model_id in sorted(self.states.in_state(S.PARKED), key=lambda m: self.states.record(m).since):
            if used <= self.config.cpu_cache_bytes:
                break
            used -= self._parked_bytes.get(model_id, 0)
            self._drop_parked(model_id, now, "CPU cache full, oldest parked copy")

    def _drop_parked(self, model_id: str, now: float, reason: str) -> None:
        self._parked_bytes.pop(model_id, None)
        self.states.move(model_id, S.UNLOADING, now, f"dropping parked copy: {reason}")
        self.effects.unload(model_id)

    def _finish_unload(self, model_id: str, parked: bool, now: float, parked_bytes: int | None = None) -> None:
        placement = self._in_use.pop(model_id, None)
        parked = parked and model_id in self._parking and placement is not None
        self._parking.discard(model_id)
        if parked and placement is not None:
            self._parked_bytes[model_id] = placement.weight_bytes if parked_bytes is None else parked_bytes
            self.states.move(model_id, S.PARKED, now, "parked in CPU memory")
            return
        self.states.move(model_id, S.AVAILABLE, now, "unloaded")
        if model_id in self._removed:
            self._forget(model_id)

    def _forget(self, model_id: str) -> None:
        self.states.remove(model_id)
        self._removed.discard(model_id)
        self._last_used.pop(model_id, None)
        self._parked_bytes.pop(model_id, None)
