"""Which worker reads which model's jobs (worker/policy/cluster.py): pure, from the workers' published state."""

from __future__ import annotations

from worker.policy.cluster import (
    EVICT_BUSY,
    EVICT_IDLE,
    ROOM,
    WARM,
    ClusterView,
    ModelOnWorker,
    QueueView,
    WorkerView,
    load_cost,
    plan_reading,
)

GB = 2**30
EMB = "embedding"


def worker(wid: str, models: dict[str, ModelOnWorker] | None = None, names: tuple[str, ...] = ("A", "B"),
           budget: int | None = None, cache: int = 1) -> WorkerView:
    catalog = {m: ModelOnWorker(EMB, gpu_bytes=GB) for m in names}
    catalog.update(models or {})
    return WorkerView(wid, catalog, budget, cache)


Plan = tuple[set[str], dict[str, str]]


def plan(view: ClusterView, me: str, replica_after_s: float = 5.0, claim_after_s: float = 3.0) -> Plan:
    result = plan_reading(view, me, replica_after_s, claim_after_s)
    return set(result.read), dict(result.claims)


def waiting(*models: str, age: float = 0.5) -> dict[str, QueueView]:
    return {m: QueueView(waiting=4, oldest_wait_s=age) for m in models}


def test_a_job_goes_where_its_model_is() -> None:
    view = ClusterView({"w1": worker("w1", {"A": ModelOnWorker(EMB, "loaded", GB)}), "w2": worker("w2")},
                       waiting("A"))
    assert plan(view, "w1") == ({"A"}, {})
    assert plan(view, "w2") == (set(), {})  # affinity: w2 leaves A's jobs to w1, and B has none waiting


def test_a_model_only_one_worker_can_serve_is_always_read_there() -> None:
    view = ClusterView({"w1": worker("w1", names=("A",)), "w2": worker("w2", names=("B",))})
    assert plan(view, "w1") == ({"A"}, {}) and plan(view, "w2") == ({"B"}, {})


def test_two_cold_models_go_to_two_workers_and_every_worker_agrees() -> None:
    view = ClusterView({"w1": worker("w1"), "w2": worker("w2")},
                       {"A": QueueView(3, 2.0), "B": QueueView(3, 1.0)})
    assert plan(view, "w1") == (set(), {"A": "cold"})  # A waited longest: first pick, the smaller id
    assert plan(view, "w2") == (set(), {"B": "cold"})  # w1's slot counted as taken by A


def test_the_cheapest_worker_loads_a_cold_model() -> None:
    parked = worker("w2", {"A": ModelOnWorker(EMB, "parked", GB)})
    view = ClusterView({"w1": worker("w1"), "w2": parked}, waiting("A"))
    assert plan(view, "w2")[1] == {"A": "cold"}  # a warm copy beats room on w1
    busy = worker("w1", {"B": ModelOnWorker(EMB, "loaded", GB, jobs=5)})
    idle = worker("w2", {"B": ModelOnWorker(EMB, "loaded", GB, jobs=0)})
    view = ClusterView({"w1": busy, "w2": idle}, waiting("A"))
    assert load_cost(busy, "A") == EVICT_BUSY and load_cost(idle, "A") == EVICT_IDLE
    assert plan(view, "w2")[1] == {"A": "cold"} and plan(view, "w1")[1] == {}


def test_costs_count_bytes_and_slots() -> None:
    roomy = worker("w", {"B": ModelOnWorker("reranker", "loaded", GB, jobs=1)}, budget=4 * GB)
    assert load_cost(roomy, "A") == ROOM  # another type: its own slot, and the bytes fit
    tight = worker("w", {"B": ModelOnWorker("reranker", "loaded", 3 * GB, jobs=1)}, budget=3 * GB)
    assert load_cost(tight, "A") == EVICT_BUSY
    assert load_cost(worker("w", {"A": ModelOnWorker(EMB, "parked", GB)}), "A") == WARM


def test_the_least_busy_then_the_smallest_id_breaks_ties() -> None:
    w1 = worker("w1", {"C": ModelOnWorker("chat", "loaded", GB, jobs=9)}, names=("A", "B", "C"))
    w2 = worker("w2", {"C": ModelOnWorker("chat", "loaded", GB, jobs=1)}, names=("A", "B", "C"))
    view = ClusterView({"w1": w1, "w2": w2}, waiting("A"))
    assert plan(view, "w2")[1] == {"A": "cold"} and plan(view, "w1")[1] == {}


def test_a_cold_model_left_waiting_may_be_claimed_by_any_candidate() -> None:
    view = ClusterView({"w1": worker("w1"), "w2": worker("w2")}, waiting("A", age=10.0))
    assert plan(view, "w1")[1] == {"A": "cold"} and plan(view, "w2")[1] == {"A": "cold"}  # the lease picks one


def test_a_model_being_loaded_is_left_to_the_lease_holder() -> None:
    view = ClusterView({"w1": worker("w1"), "w2": worker("w2")}, waiting("A", age=10.0), leases={"A": "w2"})
    assert plan(view, "w2") == ({"A"}, {}) and plan(view, "w1") == (set(), {})


def test_a_hot_model_gets_a_replica_where_it_evicts_no_busy_work() -> None:
    hot = ModelOnWorker(EMB, "loaded", GB, jobs=40, oldest_job_s=8.0)
    view = ClusterView({"w1": worker("w1", {"A": hot}), "w2": worker("w2"), "w3": worker("w3")}, waiting("A"))
    assert plan(view, "w2") == (set(), {"A": "replica"})  # w2 and w3 alike: the smaller id
    assert plan(view, "w3")[1] == {}
    busy = worker("w2", {"B": ModelOnWorker(EMB, "loaded", GB, jobs=3)})
    view = ClusterView({"w1": worker("w1", {"A": hot}), "w2": busy}, waiting("A"))
    assert plan(view, "w2")[1] == {}  # it would have to evict busier work
    calm = ModelOnWorker(EMB, "loaded", GB, jobs=2, oldest_job_s=0.1)
    assert plan(ClusterView({"w1": worker("w1", {"A": calm}), "w2": worker("w2")}), "w2")[1] == {}
    copying = ClusterView({"w1": worker("w1", {"A": hot}), "w2": worker("w2"), "w3": worker("w3")}, waiting("A"),
                          leases={"A": "w2"})
    assert plan(copying, "w3")[1] == {}  # one copy at a time


def test_a_dead_workers_models_are_cold_again_for_the_others() -> None:
    """w1 died: it is no longer in the view; its model's jobs are claimed by another worker with the model."""
    view = ClusterView({"w2": worker("w2"), "w3": worker("w3", names=("B",))}, waiting("A"))
    assert plan(view, "w2") == ({"A"}, {})  # w2 is now the only one that can serve A


def test_a_leased_load_takes_its_workers_room() -> None:
    """w1 holds A's lease (its load not started yet): the next cold model goes to w2, not to w1's 'free' slot."""
    view = ClusterView({"w1": worker("w1"), "w2": worker("w2")}, waiting("B"), leases={"A": "w1"})
    assert plan(view, "w2")[1] == {"B": "cold"} and plan(view, "w1") == ({"A"}, {})
