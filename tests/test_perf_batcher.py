"""The batching rule that keeps padding low: a batch is cut where padding would pass MAX_PADDING."""

from __future__ import annotations

from worker.microbatch import MAX_PADDING, plan_batches


def padded(lengths: list[int], batch: list[int]) -> int:
    return max(lengths[i] for i in batch) * len(batch)


def test_a_jump_in_length_starts_a_new_batch() -> None:
    lengths = [10, 10, 10, 10, 40, 40]
    assert plan_batches(lengths, budget_tokens=10_000, max_items=64) == [[0, 1, 2, 3], [4, 5]]


def test_every_batch_of_several_stays_within_the_padding_limit() -> None:
    lengths = [(i * 37) % 200 + 1 for i in range(500)]
    batches = plan_batches(lengths, budget_tokens=4096, max_items=64)
    assert sorted(i for b in batches for i in b) == list(range(500))  # nothing dropped or repeated
    for batch in batches:
        real = sum(lengths[i] for i in batch)
        assert len(batch) == 1 or padded(lengths, batch) <= MAX_PADDING * real
        assert len(batch) == 1 or padded(lengths, batch) <= 4096


def test_equal_lengths_fill_a_batch_up_to_the_budget() -> None:
    assert [len(b) for b in plan_batches([8] * 10, budget_tokens=40, max_items=64)] == [5, 5]


def test_the_padding_limit_is_a_parameter() -> None:
    lengths = [10, 40]
    assert plan_batches(lengths, budget_tokens=1000, max_items=8) == [[0], [1]]
    assert plan_batches(lengths, budget_tokens=1000, max_items=8, max_padding=2.0) == [[0, 1]]


def test_a_sequence_longer_than_the_budget_still_gets_a_batch_of_one() -> None:
    assert plan_batches([3, 900, 3, 3], budget_tokens=100, max_items=8) == [[0, 2, 3], [1]]
    assert plan_batches([], budget_tokens=100, max_items=8) == []
