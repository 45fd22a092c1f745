"""The micro-batch pace (worker/pacing.py): 0.05 s batches where their fixed cost is small, longer ones where it
is large, found from the batches' own measures."""

from __future__ import annotations

from worker.pacing import BATCH_S, MAX_BATCH_S, Pacer, fixed_cost_s, target_s


def batches(fixed_s: float, per_token_s: float, sizes: list[int]) -> list[tuple[int, float]]:
    return [(t, fixed_s + per_token_s * t) for t in sizes]


def test_the_fixed_cost_is_the_intercept_of_the_batches_times() -> None:
    found = fixed_cost_s(batches(0.02, 1e-4, [100, 200, 400, 800] * 3))
    assert found is not None and abs(found - 0.02) < 1e-9


def test_batches_of_one_size_say_nothing_about_the_fixed_cost() -> None:
    assert fixed_cost_s(batches(0.02, 1e-4, [300] * 20)) is None
    assert fixed_cost_s(batches(0.02, 1e-4, [100, 200, 400])) is None  # too few


def test_the_target_grows_with_the_fixed_cost_within_bounds() -> None:
    assert target_s(None) == BATCH_S
    assert target_s(0.001) == BATCH_S  # a GPU: the latency bound rules
    assert target_s(0.02) == 0.1  # a fifth of the batch at most
    assert target_s(1.0) == MAX_BATCH_S


def test_a_costly_batch_start_gets_longer_batches() -> None:
    cheap, costly = Pacer(), Pacer()
    budget_cheap = budget_costly = 1000
    for t in [125, 250, 500, 1000] * 4:
        budget_cheap = cheap.record("m", t, 0.001 + 1e-4 * t, budget_cheap // 2) or budget_cheap
        budget_costly = costly.record("m", t, 0.03 + 1e-4 * t, budget_costly // 2) or budget_costly
    assert cheap.target_s("m") == BATCH_S and costly.target_s("m") > 2 * BATCH_S
    assert budget_costly > 1.5 * budget_cheap  # 3x the time, at the lower speed its fixed cost leaves
    assert costly.longest_target_s() == costly.target_s("m")


def test_a_small_batch_never_shrinks_the_budget() -> None:
    pacer = Pacer()
    assert pacer.record("m", 900, 0.09, 1000) == 500  # 10k tokens/s x 0.05 s
    assert pacer.record("m", 10, 0.02, 500) is None  # nothing else was waiting: mostly fixed cost
