"""The scheduling policy, driven with fake effects and a fake clock: no processes, no Redis."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from common.protocol import ModelType
from common.settings import Settings
from worker.policy.interface import PolicyConfig, Refusal, RefusalCode
from worker.policy.planner import GIB, Placement
from worker.policy.policy import Policy
from worker.policy.states import ModelState

S = ModelState
CHAT, EMB, RR = ModelType.CHAT, ModelType.EMBEDDING, ModelType.RERANKER


def gpu(model_id: str, model_type: ModelType = CHAT, gb: float = 1.0, device: str = "cuda") -> Placement:
    size = int(gb * GIB)
    if device == "cpu":
        return Placement(model_id, model_type, "cpu", 0, 0, size)
    return Placement(model_id, model_type, "cuda", size, 0, size)


class FakeEffects:
    """Records every call; checks the invariants the policy promises at each load."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []  # since the last take()
        self.io: list[tuple[str, str]] = []  # started, not yet reported complete
        self.policy: Policy | None = None

    def load(self, model_id: str, placement: Placement) -> None:
        self._io("load", model_id)
        if self.policy is not None:
            check_invariants(self.policy)

    def cancel_load(self, model_id: str) -> None:
        self._io("cancel_load", model_id)

    def unload(self, model_id: str) -> None:
        self._io("unload", model_id)

    def park(self, model_id: str) -> None:
        self._io("park", model_id)

    def _io(self, kind: str, model_id: str) -> None:
        self.calls.append((kind, model_id))
        self.io.append((kind, model_id))

    def serve(self, model_id: str, job_ids: list[str]) -> None:
        self.calls.append(("serve", model_id, *job_ids))

    def fail_waiters(self, model_id: str, job_ids: list[str], refusal: Refusal) -> None:
        self.calls.append(("fail", model_id, refusal.code, *job_ids))
        self.last_refusal = refusal

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


def check_invariants(policy: Policy) -> None:
    """What is resident fits the budget and the per-type slots; parked copies fit the CPU cache."""
    holding = [m for m in policy.states.in_state(S.LOADING, S.LOADED, S.UNLOADING) if m in policy._in_use]
    budget = policy.config.gpu_budget_bytes
    if budget is not None:
        assert sum(policy._in_use[m].gpu_bytes for m in holding) <= budget
    for model_type in ModelType:
        assert sum(policy._in_use[m].model_type is model_type for m in holding) <= policy.config.model_cache_size
    assert sum(policy._parked_bytes.values()) <= policy.config.cpu_cache_bytes
    for m in policy.pinned & set(policy.states.in_state(S.UNLOADING)):
        assert m not in policy._parking  # a pinned model is never evicted


class Sim:
    """A fake worker: a clock, the policy, and helpers that complete the effects it started."""

    def __init__(self, placements: list[Placement], **config: Any) -> None:
        config.setdefault("gpu_budget_bytes", 100 * GIB)
        self.now = 0.0
        self.fx = FakeEffects()
        self.policy = Policy(PolicyConfig(**config), self.fx)
        self.fx.policy = self.policy
        self.policy.set_models({p.model_id: p for p in placements}, self.now)
        self.served: list[str] = []  # job ids in the order the policy granted them
        self.running: list[str] = []
        self.pinned: dict[str, int] = {}  # host bytes a model's parked copy really holds, when not its weights

    def at(self, t: float) -> Sim:
        self.now = t
        return self

    def job(self, job_id: str, model_id: str, since: float | None = None) -> None:
        self.policy.job_waiting(job_id, model_id, self.now if since is None else since, self.now)
        self._collect()

    def done(self, *job_ids: str) -> None:
        for job_id in job_ids:
            if job_id in self.running:
                self.running.remove(job_id)
            self.policy.job_done(job_id, self.now)
            self._collect()

    def finish_io(self, fail: dict[str, str] | None = None) -> list[tuple[Any, ...]]:
        """Complete every load, unload, park and cancel started so far (repeatedly, until quiet);
        the first load of each model in ``fail`` fails with that error."""
        fail = dict(fail or {})
        seen: list[tuple[Any, ...]] = []
        while pending := self.fx.io:
            self.fx.io = []
            for call in pending:
                seen.append(call)
                kind, model_id = call[0], call[1]
                if kind == "load" and fail and model_id in fail:
                    self.policy.load_failed(model_id, fail.pop(model_id), self.now)
                elif kind == "load":
                    self.policy.loaded(model_id, self.now)
                else:
                    self.policy.unloaded(model_id, self.now, parked=kind == "park",
                                         parked_bytes=self.pinned.get(model_id) if kind == "park" else None)
            check_invariants(self.policy)
        self._collect()
        self.fx.calls = [c for c in self.fx.calls if c[0] == "fail"]  # what was completed is consumed
        return seen

    def run_all(self) -> None:
        """Serve until nothing runs or waits: finish I/O, then every granted job, again and again."""
        for _ in range(100):
            self.finish_io()
            if not self.running:
                return
            self.done(*list(self.running))
        raise AssertionError("did not settle")

    def tick(self) -> None:
        self.policy.tick(self.now)
        self._collect()

    def state(self, model_id: str) -> ModelState:
        return self.policy.state(model_id)

    def _collect(self) -> None:
        for call in self.fx.calls:
            if call[0] == "serve":
                self.served.extend(call[2:])
                self.running.extend(call[2:])
        self.fx.calls = [c for c in self.fx.calls if c[0] != "serve"]


def model_of(job_id: str) -> str:
    return job_id[0]


# ---- grouping ----

def test_grouping_interleaved_jobs_are_served_per_model_from_cold() -> None:
    sim = Sim([gpu("A"), gpu("B")])
    for i, job_id in enumerate(["A1", "B1", "A2", "B2", "A3", "B3"]):
        sim.at(float(i)).job(job_id, model_of(job_id))
    sim.run_all()
    assert [model_of(j) for j in sim.served] == list("AAABBB")
    assert sim.policy.states.counts[(S.AVAILABLE, S.LOADING)] == 2  # one switch, not five


def test_grouping_with_the_first_model_resident_and_busy() -> None:
    sim = Sim([gpu("A"), gpu("B")])
    sim.job("A0", "A")
    sim.finish_io()
    assert sim.running == ["A0"]
    for i, job_id in enumerate(["B1", "A1", "B2", "A2", "B3", "A3"]):
        sim.at(1.0 + i).job(job_id, model_of(job_id))
    assert sim.fx.calls == []  # B waits; nothing is evicted under A's running job
    sim.run_all()
    assert [model_of(j) for j in sim.served] == list("AAAABBB")


# ---- starvation ----

def test_starvation_limit_forces_a_switch_away_from_a_busy_model() -> None:
    sim = Sim([gpu("A"), gpu("B")], starvation_s=30.0)
    sim.job("A0", "A")
    sim.finish_io()
    sim.at(1.0).job("B1", "B")
    t, n = 1.0, 0
    while t < 29.0:  # A's jobs overlap (never idle); B waits, as grouping wants
        t += 2.0
        n += 1
        previous = list(sim.running)
        sim.at(t).job(f"A{n}", "A")
        sim.done(*previous)
        assert sim.state("B") is S.AVAILABLE and sim.fx.calls == []
    assert sim.policy.next_deadline(t) == 31.0
    sim.at(31.0).tick()  # B's job has waited 30 s: A takes no new jobs and is evicted once idle
    sim.job("Alate", "A")
    assert "Alate" not in sim.served and sim.fx.calls == []
    sim.done(*list(sim.running))
    assert sim.fx.calls == [("park", "A")]
    sim.finish_io()
    assert sim.state("B") is S.LOADED and sim.running == ["B1"]
    sim.run_all()
    assert sim.served[-2:] == ["B1", "Alate"]  # A comes back for its waiting job


def test_a_non_starving_model_does_not_preempt_a_busy_one() -> None:
    sim = Sim([gpu("A"), gpu("B")], starvation_s=30.0)
    sim.job("A0", "A")
    sim.finish_io()
    sim.at(1.0).job("B1", "B")
    sim.at(20.0).tick()
    assert sim.state("A") is S.LOADED and sim.fx.calls == []


# ---- never under a running job ----

def test_no_switch_under_a_running_job() -> None:
    sim = Sim([gpu("A"), gpu("B")], starvation_s=5.0)
    sim.job("A1", "A")
    sim.finish_io()
    sim.at(1.0).job("B1", "B")
    for t in (10.0, 100.0, 1000.0):
        sim.at(t).tick()
        assert sim.fx.calls == [] and sim.state("A") is S.LOADED
    sim.done("A1")
    assert sim.fx.take() == [("park", "A")]


# ---- cancelled loads ----

def test_a_load_is_cancelled_when_every_job_waiting_for_it_has_gone() -> None:
    sim = Sim([gpu("A")])
    sim.job("a1", "A")
    sim.job("a2", "A")
    assert sim.fx.take() == [("load", "A")]
    sim.done("a1")
    assert sim.fx.calls == [] and sim.state("A") is S.LOADING  # a2 still waits
    sim.done("a2")
    assert sim.fx.take() == [("cancel_load", "A")]
    assert sim.state("A") is S.UNLOADING
    sim.policy.loaded("A", sim.now)  # the load finished anyway: ignored, its unload follows
    assert sim.state("A") is S.UNLOADING
    sim.fx.io = []
    sim.policy.unloaded("A", sim.now)
    assert sim.state("A") is S.AVAILABLE
    assert sim.policy.states.counts[(S.LOADING, S.UNLOADING)] == 1


def test_a_job_arriving_after_a_cancel_loads_the_model_again() -> None:
    sim = Sim([gpu("A")])
    sim.job("a1", "A")
    sim.done("a1")
    sim.job("a2", "A")  # still unloading: waits
    assert sim.fx.take() == [("load", "A"), ("cancel_load", "A")]
    sim.policy.unloaded("A", sim.now)
    assert sim.fx.take() == [("load", "A")]


# ---- pins ----

def test_a_pinned_model_is_loaded_and_never_evicted() -> None:
    placements = [gpu("P", EMB, 4.0), gpu("C1", CHAT, 4.0), gpu("C2", CHAT, 4.0)]
    sim = Sim(placements, gpu_budget_bytes=9 * GIB, pinned=frozenset({"P"}), starvation_s=1.0, idle_ttl_s=10.0)
    assert sim.fx.take() == [("load", "P")]  # pinned: loaded without waiting for a job
    sim.finish_io()
    sim.job("c1", "C1")
    sim.finish_io()
    sim.at(1.0).job("c2", "C2")  # C2 needs C1's slot; P is pinned and stays
    sim.at(5.0).run_all()
    assert sim.served == ["c1", "c2"]
    sim.at(1000.0).tick()  # idle unload skips the pinned model
    sim.finish_io()
    assert sim.state("P") is S.LOADED and sim.state("C2") is S.AVAILABLE
    assert sim.policy.states.counts[(S.LOADED, S.UNLOADING)] == 2  # C1 parked, C2 idle-unloaded


def test_a_model_that_only_fits_in_place_of_a_pinned_one_is_refused() -> None:
    sim = Sim([gpu("P", CHAT), gpu("Q", CHAT)], pinned=frozenset({"P"}))
    sim.finish_io()
    sim.job("q1", "Q")
    assert sim.fx.take() == [("fail", "Q", RefusalCode.TOO_LARGE, "q1")]
    assert "pinned" in sim.fx.last_refusal.message
    sim.policy.unpin("P", sim.now)  # admin call
    sim.job("q2", "Q")
    assert sim.fx.calls == [("park", "P")]
    sim.finish_io()
    assert sim.served == ["q2"]


def test_admin_pin_loads_and_keeps_a_model() -> None:
    sim = Sim([gpu("A"), gpu("B")], idle_ttl_s=10.0)
    sim.policy.pin("A", sim.now)
    sim.finish_io()
    sim.at(100.0).tick()
    assert sim.state("A") is S.LOADED
    assert sim.policy.status()["A"].pinned


# ---- budget ----

def test_budget_respected_when_types_compete_for_memory() -> None:
    placements = [gpu("C", CHAT, 5.0), gpu("E", EMB, 2.0), gpu("R", RR, 2.0)]
    sim = Sim(placements, gpu_budget_bytes=8 * GIB)
    sim.job("c", "C")
    sim.job("e", "E")
    sim.finish_io()
    assert sim.served == ["c", "e"]  # 7 GiB: both resident
    sim.job("r", "R")  # 9 GiB would not fit: waits while C and E run
    assert sim.fx.calls == []
    sim.done("c")  # C is idle now: evicted (bigger would also do, but idle is what may go)
    assert sim.fx.calls == [("park", "C")]
    sim.finish_io()
    assert sim.served[-1] == "r"
    assert {m: sim.state(m) for m in "CER"} == {"C": S.PARKED, "E": S.LOADED, "R": S.LOADED}


def test_a_model_larger_than_the_budget_is_refused_at_once() -> None:
    sim = Sim([gpu("big", CHAT, 9.0), gpu("E", EMB, 1.0)], gpu_budget_bytes=8 * GIB)
    sim.job("j", "big")
    assert sim.fx.take() == [("fail", "big", RefusalCode.TOO_LARGE, "j")]
    assert "9.00 GiB" in sim.fx.last_refusal.message and sim.state("big") is S.AVAILABLE


def test_only_the_victims_needed_are_evicted() -> None:
    """Evicting the idle E1 would not be enough; evicting R1 (once its job is done) is: E1 stays."""
    placements = [gpu("C1", CHAT, 5.0), gpu("E1", EMB, 2.0), gpu("E2", EMB, 1.0), gpu("R1", RR, 2.5)]
    sim = Sim(placements, gpu_budget_bytes=8 * GIB, model_cache_size=2, starvation_s=5.0,
              pinned=frozenset({"E2"}))
    sim.job("e", "E1")
    sim.job("r", "R1")
    sim.finish_io()
    sim.done("e")
    sim.job("c", "C1")
    sim.at(10.0).tick()  # C1 starves: R1 drains; E1 is not touched
    assert sim.fx.calls == []
    sim.done("r")
    assert sim.fx.calls == [("park", "R1")]
    sim.finish_io()
    assert sim.served[-1] == "c" and sim.state("E1") is S.LOADED


def test_a_fresh_load_serves_its_waiters_before_any_switch() -> None:
    sim = Sim([gpu("A"), gpu("B")], starvation_s=5.0)
    sim.job("a1", "A")  # A starts loading (slowly)
    sim.at(1.0).job("b1", "B")
    sim.at(60.0).tick()  # b1 starves, but A is loading: nothing to do
    assert sim.fx.take() == [("load", "A")]
    sim.finish_io()  # A loaded: a1 is served at once, then A goes for b1
    assert sim.served == ["a1"] and sim.state("A") is S.LOADED
    sim.run_all()
    assert sim.served == ["a1", "b1"]


@pytest.mark.parametrize("seed", [7, 11, 23, 42])
def test_random_traffic_keeps_every_invariant_and_answers_every_job(seed: int) -> None:
    rng = random.Random(seed)
    placements = [gpu("C1", CHAT, 5.0), gpu("C2", CHAT, 3.0), gpu("E1", EMB, 2.0), gpu("E2", EMB, 1.0),
                  gpu("R1", RR, 2.5), gpu("R2", RR, 9.0)]
    sim = Sim(placements, gpu_budget_bytes=8 * GIB, cpu_cache_bytes=6 * GIB, model_cache_size=2,
              starvation_s=5.0, idle_ttl_s=20.0, retry_backoff_s=2.0, pinned=frozenset({"E2"}))
    sent: list[str] = []
    for step in range(500):
        sim.at(step * 0.5)
        roll = rng.random()
        if roll < 0.45:
            sent.append(f"j{step}")
            sim.job(f"j{step}", rng.choice(placements).model_id, since=sim.now - rng.random())
        elif roll < 0.55 and (waiting := [j for j in sent if j in sim.policy.jobs and j not in sim.running]):
            cancelled = rng.choice(waiting)
            sent.remove(cancelled)
            sim.done(cancelled)
        elif roll < 0.75 and sim.running:
            sim.done(rng.choice(sim.running))
        elif roll < 0.9:
            sim.finish_io(fail={m: "out of memory" for m in ("C1", "C2", "E1") if rng.random() < 0.1})
        else:
            sim.tick()
        check_invariants(sim.policy)
    sim.policy.unpin("E2", sim.now)
    for t in (1000.0, 2000.0):
        sim.at(t).run_all()
        sim.tick()
        sim.finish_io()
    failed = [j for c in sim.fx.calls if c[0] == "fail" for j in c[3:]]
    assert sorted(sim.served + failed) == sorted(sent)  # each exactly once
    assert not sim.policy.jobs.models_waiting() and not sim.running
    assert all(sim.state(p.model_id) in (S.AVAILABLE, S.FAILED) for p in placements)  # idle: all unloaded


# ---- warm switching and the CPU cache ----

def test_an_evicted_model_is_parked_and_comes_back_warm() -> None:
    sim = Sim([gpu("A"), gpu("B")])
    sim.job("a1", "A")
    sim.run_all()
    sim.job("b1", "B")
    assert sim.finish_io() == [("park", "A"), ("load", "B")]
    assert sim.state("A") is S.PARKED
    sim.run_all()
    sim.job("a2", "A")
    sim.run_all()
    assert sim.policy.states.counts[(S.PARKED, S.LOADING)] == 1


def test_parked_copies_are_dropped_oldest_first_beyond_the_cpu_cache() -> None:
    sim = Sim([gpu("A", gb=2.0), gpu("B", gb=2.0), gpu("C", gb=2.0), gpu("D", gb=2.0)],
              cpu_cache_bytes=int(4.5 * GIB))
    for i, m in enumerate("ABCD"):
        sim.at(float(i)).job(m.lower(), m)
        sim.run_all()
    # Parking C pushed the cache over 4.5 GiB: A, the oldest parked copy, was dropped.
    assert [sim.state(m) for m in "ABCD"] == [S.AVAILABLE, S.PARKED, S.PARKED, S.LOADED]
    assert sim.policy.states.counts[(S.PARKED, S.UNLOADING)] == 1
    sim.job("a2", "A")  # from disk again; parking D drops B, now the oldest
    sim.run_all()
    assert [sim.state(m) for m in "ABCD"] == [S.LOADED, S.AVAILABLE, S.PARKED, S.PARKED]


def test_the_cpu_cache_counts_the_bytes_really_pinned() -> None:
    """Two 2 GiB models fit a 5 GiB cache by their weights, but not when each parked copy pins 4 GiB (torch's
    pinned allocator rounds up to a power of two): the older copy is dropped."""
    sim = Sim([gpu("A", gb=2.0), gpu("B", gb=2.0), gpu("C", gb=2.0)], cpu_cache_bytes=5 * GIB)
    sim.pinned = {"A": 4 * GIB, "B": 4 * GIB}
    for i, m in enumerate("ABC"):
        sim.at(float(i)).job(m.lower(), m)
        sim.run_all()
    assert [sim.state(m) for m in "ABC"] == [S.AVAILABLE, S.PARKED, S.LOADED]
    assert sim.policy._parked_bytes == {"B": 4 * GIB}


def test_a_placement_the_settings_cannot_give_refuses_its_jobs_with_the_reason() -> None:
    broken = dataclasses.replace(gpu("A"), error="a context of 32768 tokens needs 1.75 GiB of KV cache")
    sim = Sim([broken, gpu("B")])
    sim.job("a", "A")
    assert sim.fx.take() == [("fail", "A", RefusalCode.LOAD_FAILED, "a")]
    assert "1.75 GiB" in sim.fx.last_refusal.message
    sim.job("b", "B")
    sim.run_all()
    assert sim.served == ["b"] and sim.state("A") is S.AVAILABLE


def test_a_model_too_big_for_the_cpu_cache_is_unloaded_not_parked() -> None:
    sim = Sim([gpu("A", gb=3.0), gpu("B")], cpu_cache_bytes=2 * GIB)
    sim.job("a", "A")
    sim.run_all()
    sim.job("b", "B")
    assert sim.fx.take()[0] == ("unload", "A")


def test_on_cpu_only_evicted_models_are_parked_within_the_cpu_cache() -> None:
    sim = Sim([gpu("A", device="cpu"), gpu("B", device="cpu")], gpu_budget_bytes=None)
    sim.job("a", "A")
    sim.run_all()
    sim.job("b", "B")
    assert sim.fx.take()[0] == ("park", "A")


def test_on_cpu_only_evicted_models_are_unloaded_without_a_cpu_cache() -> None:
    sim = Sim([gpu("A", device="cpu"), gpu("B", device="cpu")], gpu_budget_bytes=None, cpu_cache_bytes=0)
    sim.job("a", "A")
    sim.run_all()
    sim.job("b", "B")
    assert sim.fx.take()[0] == ("unload", "A")


def test_admin_drop_unloads_an_idle_model_and_refuses_a_busy_one() -> None:
    sim = Sim([gpu("A"), gpu("B", EMB)], pinned=frozenset({"A"}))
    sim.job("a", "A")
    sim.finish_io()  # A loaded; a granted, still running
    assert not sim.policy.drop("A", sim.now)  # a job runs on it
    sim.done("a")
    assert sim.policy.drop("A", sim.now)
    assert ("unload", "A") in sim.fx.io
    assert "A" not in sim.policy.pinned


# ---- idle unload ----

def test_idle_models_are_unloaded_after_the_ttl() -> None:
    sim = Sim([gpu("A"), gpu("B", EMB)], idle_ttl_s=60.0)
    sim.job("a", "A")
    sim.run_all()
    sim.at(10.0).job("b", "B")
    sim.run_all()
    assert sim.policy.next_deadline(10.0) == 60.0
    sim.at(59.0).tick()
    assert sim.fx.calls == []
    sim.at(60.0).tick()
    assert sim.fx.take() == [("unload", "A")]  # idle: everything freed, not parked
    sim.at(70.0).tick()
    assert sim.fx.take() == [("unload", "B")]


def test_parked_copies_expire_with_the_ttl_too() -> None:
    sim = Sim([gpu("A"), gpu("B")], idle_ttl_s=60.0)
    sim.job("a", "A")
    sim.run_all()
    sim.at(1.0).job("b", "B")
    sim.run_all()
    assert sim.state("A") is S.PARKED
    sim.at(60.0).tick()
    assert sim.fx.take() == [("unload", "A")]


def test_no_idle_unload_when_disabled() -> None:
    sim = Sim([gpu("A")], idle_ttl_s=1.0, auto_unload=False)
    sim.job("a", "A")
    sim.run_all()
    sim.at(1e6).tick()
    assert sim.fx.calls == [] and sim.state("A") is S.LOADED
    assert sim.policy.next_deadline(1e6) is None


# ---- failures ----

def test_a_failed_load_answers_its_waiters_backs_off_then_retries() -> None:
    sim = Sim([gpu("A"), gpu("B", EMB)], retry_backoff_s=30.0)
    sim.job("a1", "A")
    sim.job("a2", "A")
    sim.job("b1", "B")
    sim.finish_io(fail={"A": "CUDA out of memory"})
    assert sim.state("A") is S.FAILED and sim.served == ["b1"]  # the others keep being served
    fails = [c for c in sim.fx.take() if c[0] == "fail"]
    assert fails == [("fail", "A", RefusalCode.LOAD_FAILED, "a1", "a2")]
    assert "CUDA out of memory" in sim.fx.last_refusal.message
    assert sim.policy.status()["A"].error == "CUDA out of memory"
    sim.at(10.0).job("a3", "A")  # within the back-off: the error at once, no load
    assert sim.fx.take() == [("fail", "A", RefusalCode.LOAD_FAILED, "a3")]
    sim.at(30.0).job("a4", "A")  # back-off over: a later request retries
    assert sim.fx.take() == [("load", "A")]
    sim.finish_io(fail={"A": "still bad"})
    assert sim.policy.states.record("A").retry_at == 30.0 + 60.0  # doubled
    sim.at(90.0).job("a5", "A")
    sim.finish_io()
    assert sim.state("A") is S.LOADED and sim.served[-1] == "a5"


# ---- co-residence and slots ----

def test_models_of_different_types_are_resident_together() -> None:
    sim = Sim([gpu("C", CHAT, 5.58), gpu("E", EMB, 1.21), gpu("R", RR, 1.21)], gpu_budget_bytes=8 * GIB)
    for m in "CER":
        sim.job(m.lower(), m)
    assert [c for c in sim.fx.take()] == [("load", "C"), ("load", "E"), ("load", "R")]
    sim.finish_io()
    assert sorted(sim.served) == ["c", "e", "r"]
    assert all(sim.state(m) is S.LOADED for m in "CER")


@pytest.mark.parametrize("cache_size", [1, 2])
def test_cache_size_per_type_is_respected(cache_size: int) -> None:
    sim = Sim([gpu("A"), gpu("B"), gpu("C")], model_cache_size=cache_size)
    for i, m in enumerate("ABC"):
        sim.at(float(i)).job(m.lower(), m)
        sim.run_all()
    loaded = [m for m in "ABC" if sim.state(m) is S.LOADED]
    assert len(loaded) == cache_size and loaded[-1] == "C"
    if cache_size == 2:
        assert sim.state("A") is S.PARKED  # the least recently used one went


# ---- catalog changes, clock, guard ----

def test_a_model_removed_from_the_catalog_is_unloaded_and_its_waiters_answered() -> None:
    sim = Sim([gpu("A"), gpu("B")])
    sim.job("a", "A")
    sim.finish_io()
    sim.job("b", "B")
    sim.policy.set_models({"A": gpu("A")}, sim.now)
    assert sim.fx.take() == [("fail", "B", RefusalCode.NOT_FOUND, "b")]
    sim.policy.set_models({}, sim.now)
    assert sim.fx.calls == []  # A still runs a job
    sim.done("a")
    assert sim.fx.take() == [("unload", "A")]
    sim.finish_io()
    assert list(sim.policy.states) == []


def test_unknown_models_are_refused() -> None:
    sim = Sim([gpu("A")])
    sim.job("x", "nope")
    assert sim.fx.take() == [("fail", "nope", RefusalCode.NOT_FOUND, "x")]


def test_effects_must_not_call_the_policy_back() -> None:
    class Reentrant(FakeEffects):
        def load(self, model_id: str, placement: Placement) -> None:
            assert self.policy is not None
            self.policy.loaded(model_id, 0.0)

    fx = Reentrant()
    policy = Policy(PolicyConfig(gpu_budget_bytes=None), fx)
    fx.policy = policy
    policy.set_models({"A": gpu("A", device="cpu")}, 0.0)
    with pytest.raises(RuntimeError, match="called the policy back"):
        policy.job_waiting("a", "A", 0.0, 0.0)


def test_config_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PINNED_MODELS", " bge-m3, qwen ,,")
    monkeypatch.setenv("LLM_SWITCH_STARVATION_S", "12")
    monkeypatch.setenv("LLM_LOAD_RETRY_BACKOFF_S", "7")
    config = PolicyConfig.from_settings(Settings(), gpu_budget_bytes=8 * GIB)
    assert config.pinned == frozenset({"bge-m3", "qwen"})
    assert (config.starvation_s, config.retry_backoff_s, config.cpu_cache_bytes) == (12.0, 7.0, 8 * GIB)


# ---- the cluster view ----

def test_a_target_served_elsewhere_never_evicts_busy_work() -> None:
    """B is held by another worker: its starving job here may not evict A while A is busy; once A is idle it may."""
    sim = Sim([gpu("A"), gpu("B")], starvation_s=30.0)
    sim.job("a1", "A")
    sim.finish_io()
    sim.policy.set_elsewhere(frozenset({"B"}), 0.0)
    sim.at(1.0).job("b1", "B")
    sim.at(2.0).job("a2", "A")
    sim.at(40.0).tick()  # b1 starves, but A is busy and B is served elsewhere
    assert sim.fx.calls == [] and sim.state("A") is S.LOADED
    sim.done("a1", "a2")
    sim.at(41.0).tick()
    assert ("park", "A") in sim.fx.take()  # idle A may go for B


def test_without_the_cluster_view_a_starving_target_evicts_busy_work() -> None:
    sim = Sim([gpu("A"), gpu("B")], starvation_s=30.0)
    sim.job("a1", "A")
    sim.finish_io()
    sim.at(1.0).job("b1", "B")
    sim.at(40.0).tick()
    sim.at(40.0).job("a2", "A")
    assert "a2" not in sim.served  # A drains for B: no new grants
