"""worker/cpus.py: an engine thread computing with one thread pins itself and the event loop (the main thread) to one
CPU; threads started from the pinned loop inherit the pin unless they start with `compute_anywhere` (the worker's
thread pool does); the loop gets every CPU back once the last such engine thread is released. With several compute
threads nothing is pinned. (tests/test_vllm_engine.py checks the same on a running worker.)"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from worker import cpus

T = TypeVar("T")

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def on_thread(fn: Callable[[], T]) -> tuple[T, int]:
    """`fn`'s result on a new thread, and that thread's id."""
    out: list[tuple[T, int]] = []
    thread = threading.Thread(target=lambda: out.append((fn(), threading.get_native_id())))
    thread.start()
    thread.join()
    return out[0]


def affinity() -> set[int]:
    return os.sched_getaffinity(0)


@pytest.fixture
def given() -> Iterator[set[int]]:
    """The CPUs this (the main) thread may use, given back after the test whatever it pinned."""
    cpus_before = affinity()
    yield cpus_before
    os.sched_setaffinity(0, cpus_before)


def test_one_compute_thread_shares_the_loops_cpu_and_computing_threads_get_every_cpu(given: set[int]) -> None:
    assert given == cpus.GIVEN
    (cpu, pinned), engine = on_thread(lambda: (cpus.share_loop_cpu(1), affinity()))
    assert cpu in given and pinned == {cpu}
    assert affinity() == {cpu}  # this (the main) thread: the event loop's
    inherited, _ = on_thread(affinity)
    assert inherited == {cpu}  # a plain thread started from the pinned loop inherits the pin
    with ThreadPoolExecutor(initializer=cpus.compute_anywhere) as pool:
        assert pool.submit(affinity).result() == given
    cpus.release_loop_cpu(engine)
    assert affinity() == given


def test_the_loop_keeps_its_cpu_until_the_last_engine_thread_is_released(given: set[int]) -> None:
    (first, _), a = on_thread(lambda: (cpus.share_loop_cpu(1), None))
    (second, _), b = on_thread(lambda: (cpus.share_loop_cpu(1), None))
    assert first == second  # one worker process: one CPU for its loop and engine threads
    cpus.release_loop_cpu(a)
    assert affinity() == {first}
    cpus.release_loop_cpu(a)  # released twice: nothing more
    assert affinity() == {first}
    cpus.release_loop_cpu(b)
    assert affinity() == given


def test_several_compute_threads_pin_nothing(given: set[int]) -> None:
    (cpu, mine), engine = on_thread(lambda: (cpus.share_loop_cpu(2), affinity()))
    assert cpu is None and mine == given and affinity() == given
    cpus.release_loop_cpu(engine)  # never shared: nothing to release
    assert affinity() == given
