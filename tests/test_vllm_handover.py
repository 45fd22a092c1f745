"""The handover rule (worker/engines/vllm_handover.py) with stand-in engines: a model busy for `after_s` starts its
next engine once; new requests go to it once it is up, running ones finish where they are, and the first engine
is shut down after its last request; an idle moment restarts the clock, the gaps between clients' requests do
not; an unload during the start shuts the late engine down. (tests/test_vllm_engine.py does it with vLLM's real
engines.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from worker.engines.vllm_handover import HandoverEngine


class Output:
    def __init__(self, engine: str, finished: bool) -> None:
        self.engine, self.finished = engine, finished


class StandIn:
    def __init__(self, name: str, steps: int = 3, step_s: float = 0.02) -> None:
        self.name, self.steps, self.step_s = name, steps, step_s
        self.running: set[str] = set()
        self.stopped = threading.Event()
        self.aborted: list[str] = []

    async def generate(self, prompt: Any, params: Any, request_id: str, **_: Any) -> AsyncIterator[Output]:
        self.running.add(request_id)
        try:
            for i in range(self.steps):
                await asyncio.sleep(self.step_s)
                yield Output(self.name, i == self.steps - 1)
        finally:
            self.running.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def get_num_unfinished_requests(self) -> int:
        return len(self.running)

    def shutdown(self) -> None:
        self.stopped.set()


async def served_by(engine: HandoverEngine, request_id: str) -> str:
    return [o.engine async for o in engine.generate(None, None, request_id)][-1]


async def keep_busy(engine: HandoverEngine, seconds: float, streams: int = 3) -> list[str]:
    """`streams` requests always running, for `seconds`: which engine answered each."""
    answered: list[str] = []
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            answered.append(await served_by(engine, f"c{n}-{i}"))
            i += 1

    await asyncio.gather(*(client(n) for n in range(streams)))
    return answered


def test_a_busy_model_moves_to_its_next_engine_once() -> None:
    first, second = StandIn("first", steps=5), StandIn("second")
    starts: list[float] = []

    def start() -> StandIn:
        starts.append(time.monotonic())
        time.sleep(0.2)  # the processes' start
        return second

    engine = HandoverEngine(first, start, after_s=0.3, name="m")
    answered = asyncio.run(keep_busy(engine, 1.5))
    assert len(starts) == 1 and engine.handovers == 1
    assert answered[0] == "first" and answered[-1] == "second"
    assert answered.index("second") < len(answered) - 3  # new requests went to it once it was up
    assert "first" not in answered[answered.index("second") + 3:]  # only the runs started before the switch
    assert first.stopped.wait(2) and not second.stopped.is_set()
    assert engine.current is second and engine.get_num_unfinished_requests() == 0


def test_an_idle_moment_restarts_the_busy_clock() -> None:
    first = StandIn("first")
    starts: list[int] = []
    engine = HandoverEngine(first, lambda: starts.append(1) or StandIn("second"), after_s=0.3, name="m")

    async def bursts() -> None:
        for _ in range(6):  # each burst 0.15 s, then idle
            await keep_busy(engine, 0.15)
            await asyncio.sleep(0.1)

    asyncio.run(bursts())
    assert starts == [] and engine.handovers == 0


def test_clients_in_lockstep_keep_the_model_busy() -> None:
    """Four clients whose requests end together and are sent again a few milliseconds later: no request runs when
    each round arrives, yet the model is busy, and it is handed over (CI's handover test ran that way)."""
    engine = HandoverEngine(StandIn("first"), lambda: StandIn("second"), after_s=0.3, name="m")

    async def lockstep() -> list[str]:
        answered: list[str] = []
        deadline, i = time.monotonic() + 1.2, 0
        while time.monotonic() < deadline:
            answered += await asyncio.gather(*(served_by(engine, f"r{i}-{n}") for n in range(4)))
            await asyncio.sleep(0.005)
            i += 1
        return answered

    answered = asyncio.run(lockstep())
    assert engine.handovers == 1 and answered[-1] == "second"


def test_no_handover_with_zero_and_an_unload_during_the_start() -> None:
    never = HandoverEngine(StandIn("first"), lambda: StandIn("second"), after_s=0, name="m")
    assert set(asyncio.run(keep_busy(never, 0.5))) == {"first"}

    first, late = StandIn("first"), StandIn("late")
    release = threading.Event()

    def slow_start() -> StandIn:
        release.wait(5)
        return late

    engine = HandoverEngine(first, slow_start, after_s=0.1, name="m")

    async def unload_mid_start() -> None:
        await keep_busy(engine, 0.4)
        engine.shutdown()  # the model is unloaded while the next engine still starts
        release.set()
        await asyncio.sleep(0.3)  # the start finishes, and its engine is adopted by nobody

    asyncio.run(unload_mid_start())
    assert first.stopped.is_set() and late.stopped.wait(2)
    assert engine.current is first and engine.handovers == 0


def test_abort_reaches_the_engine_the_request_runs_on() -> None:
    first, second = StandIn("first", steps=50), StandIn("second")
    engine = HandoverEngine(first, lambda: second, after_s=100, name="m")

    async def run() -> None:
        stream = engine.generate(None, None, "r1")
        await anext(stream)
        engine.current = second  # as a handover would, while r1 runs
        await engine.abort("r1")
        await engine.abort("r2")  # unknown: the current engine
        await stream.aclose()

    asyncio.run(run())
    assert first.aborted == ["r1"] and second.aborted == ["r2"]
