"""Model states: the transition table, the tracker that applies it, back-off."""

from __future__ import annotations

import logging

import pytest

from worker.policy.states import (
    ALLOWED,
    MAX_BACKOFF_FACTOR,
    InvalidTransition,
    ModelState,
    StateTable,
    retry_delay_s,
)

S = ModelState


def test_every_state_has_a_row_and_is_reachable_from_available() -> None:
    assert set(ALLOWED) == set(ModelState)
    seen, todo = {S.AVAILABLE}, [S.AVAILABLE]
    while todo:
        for nxt in ALLOWED[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(ModelState)


def test_a_load_park_and_warm_reload_cycle_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, ModelState, ModelState, str]] = []
    table = StateTable(retry_backoff_s=10.0, listener=lambda *e: events.append(e))
    table.add("m", now=0.0)
    caplog.set_level(logging.INFO, logger="worker.policy.states")
    for step, to in enumerate([S.LOADING, S.LOADED, S.UNLOADING, S.PARKED, S.LOADING, S.LOADED]):
        table.move("m", to, now=float(step), reason="test")
    assert table.state("m") is S.LOADED and table.record("m").since == 5.0
    assert table.counts[(S.AVAILABLE, S.LOADING)] == 1
    assert table.counts[(S.PARKED, S.LOADING)] == 1
    assert table.counts[(S.LOADING, S.LOADED)] == 2
    assert sum(table.counts.values()) == 6 == len(events)
    assert events[0] == ("m", S.AVAILABLE, S.LOADING, "test")
    assert "model m: unloading -> parked (test)" in caplog.text


@pytest.mark.parametrize(("path", "bad"), [
    ([], S.LOADED),  # available -> loaded skips loading
    ([], S.PARKED),
    ([S.LOADING, S.LOADED], S.PARKED),  # parking goes through unloading (it holds memory meanwhile)
    ([S.LOADING, S.LOADED], S.AVAILABLE),
    ([S.LOADING], S.AVAILABLE),  # a cancelled load unloads first
])
def test_transitions_outside_the_table_are_refused(path: list[ModelState], bad: ModelState) -> None:
    table = StateTable(retry_backoff_s=1.0)
    table.add("m", 0.0)
    for to in path:
        table.move("m", to, 0.0)
    before = table.state("m"), sum(table.counts.values())
    with pytest.raises(InvalidTransition):
        table.move("m", bad, 1.0)
    assert (table.state("m"), sum(table.counts.values())) == before


def test_a_failed_load_keeps_its_error_and_backs_off_exponentially() -> None:
    table = StateTable(retry_backoff_s=10.0)
    table.add("m", 0.0)
    table.move("m", S.LOADING, 0.0)
    table.move("m", S.FAILED, 1.0, error="CUDA out of memory")
    rec = table.record("m")
    assert (rec.error, rec.retry_at, rec.failures) == ("CUDA out of memory", 11.0, 1)
    table.move("m", S.LOADING, 11.0)
    table.move("m", S.FAILED, 12.0, error="again")
    assert (rec.error, rec.retry_at, rec.failures) == ("again", 32.0, 2)
    table.move("m", S.LOADING, 32.0)
    table.move("m", S.LOADED, 33.0)
    assert (rec.error, rec.retry_at, rec.failures) == (None, None, 0)


def test_retry_delay_doubles_up_to_its_cap() -> None:
    assert [retry_delay_s(5.0, n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay_s(5.0, 30) == 5.0 * MAX_BACKOFF_FACTOR


def test_only_models_holding_no_memory_can_be_forgotten() -> None:
    table = StateTable(retry_backoff_s=1.0)
    table.add("m", 0.0)
    table.add("m", 5.0)  # already tracked: unchanged
    assert table.record("m").since == 0.0
    table.move("m", S.LOADING, 1.0)
    with pytest.raises(InvalidTransition):
        table.remove("m")
    table.move("m", S.FAILED, 2.0, error="bad config")
    table.remove("m")
    assert "m" not in table and list(table) == []


def test_in_state_lists_models_by_state() -> None:
    table = StateTable(retry_backoff_s=1.0)
    for m in ("a", "b", "c"):
        table.add(m, 0.0)
    table.move("b", S.LOADING, 0.0)
    assert table.in_state(S.AVAILABLE) == ["a", "c"]
    assert table.in_state(S.LOADING, S.LOADED) == ["b"]
