"""The micro-batching queue, as a pure unit."""

from __future__ import annotations

from common.protocol import Job
from worker.microbatch import MicroBatchQueue, Pending, plan_batches


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


def drain(queue: MicroBatchQueue) -> list[tuple[str, list[tuple[str, int]]]]:
    """Every batch the queue hands out, in order: (model, [(job id, sequence index), ...])."""
    out = []
    while (picked := queue.next_batch()) is not None:
        out.append((picked[0], [(it.pending.job.id, it.index) for it in picked[1]]))
    return out


def test_batches_serve_the_oldest_model_first_and_everything_waiting_for_it() -> None:
    queue = MicroBatchQueue(budget_tokens=1000, max_items=64)
    queue.add(Pending(job("b1", "B", 2), "1-0", [[1, 2, 3]]))
    queue.add(Pending(job("a1", "A", 1), "1-1", [[1] * 5, [1]]))
    queue.add(Pending(job("a2", "A", 3), "1-2", [[1, 1]]))
    batches = drain(queue)
    assert [model for model, _ in batches] == ["A"] * (len(batches) - 1) + ["B"]
    assert batches[0][1][0] == ("a1", 1)  # the oldest job's shortest sequence leads the first batch
    assert sorted(x for _, items in batches[:-1] for x in items) == [("a1", 0), ("a1", 1), ("a2", 0)]
    assert batches[-1] == ("B", [("b1", 0)]) and len(queue) == 0


def test_a_small_job_behind_a_huge_one_is_in_the_next_batch() -> None:
    queue = MicroBatchQueue(budget_tokens=64, max_items=64)
    queue.paced_tokens["A"] = 64  # measured: the whole budget is about a tenth of a second
    queue.add(Pending(job("huge", "A", 1), "1-0", [[7] * 8 for _ in range(2048)]))
    first = queue.next_batch()
    assert first is not None and {it.pending.job.id for it in first[1]} == {"huge"} and len(first[1]) == 8
    queue.add(Pending(job("small", "A", 2), "1-1", [[7] * 8]))
    second = queue.next_batch()
    assert second is not None and ("small", 0) in [(it.pending.job.id, it.index) for it in second[1]]


def test_two_big_jobs_take_turns() -> None:
    queue = MicroBatchQueue(budget_tokens=32, max_items=64)
    queue.paced_tokens["A"] = 32
    queue.add(Pending(job("x", "A", 1), "1-0", [[1] * 8 for _ in range(16)]))
    queue.add(Pending(job("y", "A", 2), "1-1", [[1] * 8 for _ in range(16)]))
    leads = [items[0][0] for _, items in drain(queue)]
    assert leads[:4] == ["x", "y", "x", "y"] and len(leads) == 8


def test_a_model_not_measured_yet_starts_at_a_quarter_of_the_budget() -> None:
    queue = MicroBatchQueue(budget_tokens=400, max_items=64)
    queue.add(Pending(job("a", "A", 1), "1-0", [[1] * 10 for _ in range(40)]))
    first = queue.next_batch()
    assert first is not None and len(first[1]) == 10  # 100 padded tokens


def test_the_paced_budget_caps_every_batch() -> None:
    queue = MicroBatchQueue(budget_tokens=1000, max_items=64)
    queue.add(Pending(job("a", "A", 1), "1-0", [[1] * 10 for _ in range(20)]))
    queue.paced_tokens["A"] = 30
    assert all(len(items) * 10 <= 30 for _, items in drain(queue))


def test_pending_completes_when_every_sequence_is_filled() -> None:
    pending = Pending(job("x", "A", 0), "1-0", [[1], [2, 3]])
    assert pending.tokens == 3
    assert not pending.fill(1, "second")
    assert pending.fill(0, "first")
    assert pending.results == ["first", "second"]


def test_drop_removes_gone_jobs() -> None:
    queue = MicroBatchQueue(100, 8)
    queue.add(Pending(job("keep", "A", 0), "1", [[1]]))
    queue.add(Pending(job("gone", "A", 0), "2", [[1]]))
    dropped = queue.drop(lambda p: p.job.id == "gone")
    assert [p.job.id for p in dropped] == ["gone"]
    assert [p.job.id for p in queue.waiting()] == ["keep"]


def test_a_part_served_job_is_not_starved_by_new_ones() -> None:
    """Round robin: a new one-text job arrives before every batch, yet the old four-text job keeps getting turns."""
    queue = MicroBatchQueue(budget_tokens=10, max_items=64)
    queue.paced_tokens["A"] = 10
    queue.add(Pending(job("old", "A", 0), "1-0", [[1] * (4 + 3 * i) for i in range(4)]))  # batches of one
    served_old = []
    for n in range(16):
        queue.add(Pending(job(f"new{n}", "A", n + 1), f"2-{n}", [[1] * 9]))
        picked = queue.next_batch()
        assert picked is not None
        served_old += [it.index for it in picked[1] if it.pending.job.id == "old"]
    assert sorted(served_old) == [0, 1, 2, 3]  # all of the old job within 16 batches (its turn comes round)
