"""Embedding and rerank batches compute in lanes (worker/handlers/batched.py, worker/cpus.py): on a CPU two
batches side by side, each on its lane's share of the cores as torch threads (a batch alone on all of them); on
a GPU one batch at a time. A pure unit test of the handler's scheduling: a stand-in engine, whose
batches wait for each other at a barrier (one lane at a time breaks it: the batches fail)."""

from __future__ import annotations

import asyncio
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from common.protocol import Job, Message, ModelType
from common.settings import Settings
from worker import cpus
from worker.engines.base import Engine
from worker.handlers.batched import BatchedHandler
from worker.microbatch import Item, MicroBatchQueue, Pending
from worker.transport import Delivery


class Outbox:
    """The transport's surface the handler uses: replies are recorded, nobody has gone."""

    def __init__(self) -> None:
        self.replies: list[Message] = []

    async def reply(self, delivery: Delivery, message: Message) -> None:
        self.replies.append(message)

    async def cancelled(self, job_ids: list[str]) -> dict[str, int]:
        return {}


class Probe(BatchedHandler):
    model_type = ModelType.EMBEDDING

    def __init__(self, settings: Settings, side_by_side: int) -> None:
        scheduler: Any = SimpleNamespace(engines={"m": SimpleNamespace(packed=False)}, release=lambda job_id: None)
        self.outbox = Outbox()
        super().__init__(settings, None, scheduler, self.outbox, MicroBatchQueue(64, 1), max_waiting=8)  # type: ignore[arg-type]
        self.barrier = threading.Barrier(side_by_side, timeout=30) if side_by_side > 1 else None
        self.seen: list[tuple[int, str]] = []  # per batch: torch threads, the lane's thread

    async def prepare(self, delivery: Delivery) -> Pending:
        raise NotImplementedError

    def compute(self, engine: Engine, items: list[Item]) -> list[Any]:
        self.seen.append((torch.get_num_threads(), threading.current_thread().name))
        if self.barrier is not None:
            self.barrier.wait()  # every lane inside a batch at once
        return [0.5 for _ in items]

    def body(self, pending: Pending) -> dict[str, Any]:
        return {"data": pending.results}


async def serve(handler: Probe, jobs: int) -> list[Message]:
    for n in range(jobs):
        job = Job(id=f"job-{n}", kind="embedding", model="m", reply_to="r", payload={})
        handler._deliveries[job.id] = Delivery("s", f"{n}-0", job)
        handler.queue.add(Pending(job, f"{n}-0", [[1, 2, 3]]))  # one sequence: one batch each
    running = asyncio.create_task(handler.run())
    handler._work.set()
    try:
        async with asyncio.timeout(60):
            while len(handler.outbox.replies) < jobs:
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
    return handler.outbox.replies


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_on_a_cpu_two_batches_compute_side_by_side_on_their_share_of_the_cores() -> None:
    mine = torch.get_num_threads()
    handler = Probe(Settings(device="cpu", cpu_compute_lanes=2), side_by_side=2)
    replies = asyncio.run(serve(handler, 2))
    assert [m.kind for m in replies] == ["result", "result"]
    cores = len(cpus.GIVEN)
    assert [threads for threads, _ in handler.seen] == [cores // 2] * 2  # each on its share
    assert len({lane for _, lane in handler.seen}) == 2
    assert torch.get_num_threads() == mine  # a thread that computed already keeps its own setting

    alone = Probe(Settings(device="cpu", cpu_compute_lanes=2), side_by_side=1)
    assert [m.kind for m in asyncio.run(serve(alone, 1))] == ["result"]
    assert [threads for threads, _ in alone.seen] == [cores]  # a batch alone: every core


def test_on_a_gpu_batches_take_turns_on_one_lane() -> None:
    handler = Probe(Settings(device="cuda", cpu_compute_lanes=2), side_by_side=1)
    replies = asyncio.run(serve(handler, 3))
    assert [m.kind for m in replies] == ["result"] * 3
    assert len({lane for _, lane in handler.seen}) == 1


def test_lanes_and_their_threads() -> None:
    cores = len(cpus.GIVEN)
    assert cpus.compute_lanes("cuda", 2) == 1
    assert cpus.compute_lanes("cpu", 2) == min(2, cores)
    assert cpus.compute_lanes("cpu", 1000) == cores
    assert cpus.lane_threads(2, busy=0) == cores
    assert cpus.lane_threads(2, busy=1) == max(1, cores // 2)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_by_default_two_lanes_on_a_cpu() -> None:
    handler = Probe(Settings(device="cpu"), side_by_side=2)
    assert [m.kind for m in asyncio.run(serve(handler, 2))] == ["result"] * 2
    assert len({lane for _, lane in handler.seen}) == 2


def test_one_lane_on_a_cpu_when_configured() -> None:
    handler = Probe(Settings(device="cpu", cpu_compute_lanes=1), side_by_side=1)
    assert [m.kind for m in asyncio.run(serve(handler, 2))] == ["result"] * 2
    assert len({lane for _, lane in handler.seen}) == 1
