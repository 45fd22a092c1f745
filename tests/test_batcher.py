"""The micro-batching queue, as a pure unit."""

from __future__ import annotations

from common.protocol import Job
from worker.batcher import BatchQueue, Pending, plan_batches


def job(job_id: str, model: str, created_ms: int) -> Job:
    return Job(id=job_id, kind="embedding", model=model, reply_to="r", payload={}, created_ms=created_ms)


def test_plan_sorts_by_length_and_respects_the_padded_budget() -> None:
    lengths = [50, 3, 10, 4, 49, 11]
    batches = plan_batches(lengths, budget_tokens=40, max_items=8)
    assert [i for b in batches for i in b] == sorted(range(6), key=lambda i: lengths[i])
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 40 or len(batch) == 1


def test_an_item_longer_than_the_budget_gets_a_batch_of_its_own() -> None:
    assert plan_batches([500, 2, 2], budget_tokens=100, max_items=8) == [[1, 2], [0]]


def test_max_items_caps_a_batch() -> None:
    assert [len(b) for b in plan_batches([1] * 10, budget_tokens=10_000, max_items=4)] == [4, 4, 2]


def test_round_serves_the_oldest_model_and_everything_waiting_for_it() -> None:
    queue = BatchQueue(budget_tokens=1000, max_items=64)
    queue.add(Pending(job("b1", "B", 2), "1-0", [[1, 2, 3]]))
    queue.add(Pending(job("a1", "A", 1), "1-1", [[1] * 5, [1]]))
    queue.add(Pending(job("a2", "A", 3), "1-2", [[1, 1]]))
    round_ = queue.next_round()
    assert round_ is not None
    model, batches = round_
    assert model == "A"
    served = [(it.pending.job.id, it.index) for b in batches for it in b]
    assert sorted(served) == [("a1", 0), ("a1", 1), ("a2", 0)]
    assert len(queue) == 1
    assert queue.next_round() is not None and queue.next_round() is None


def test_pending_completes_when_every_sequence_is_filled() -> None:
    pending = Pending(job("x", "A", 0), "1-0", [[1], [2, 3]])
    assert pending.tokens == 3
    assert not pending.fill(1, "second")
    assert pending.fill(0, "first")
    assert pending.results == ["first", "second"]


def test_drop_removes_gone_jobs() -> None:
    queue = BatchQueue(100, 8)
    queue.add(Pending(job("keep", "A", 0), "1", [[1]]))
    queue.add(Pending(job("gone", "A", 0), "2", [[1]]))
    dropped = queue.drop(lambda p: p.job.id == "gone")
    assert [p.job.id for p in dropped] == ["gone"]
    assert [p.job.id for p in queue.waiting()] == ["keep"]
