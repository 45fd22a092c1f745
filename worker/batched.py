"""Handlers whose jobs are micro-batched by token budget: admit (tokenise), rounds of batches, reply.

A subclass says how to turn a job into a `Pending` (its sequences), how to run one batch on its
engine, and what a finished job's answer looks like; queueing, cancellation, deadlines, failures
and replies are shared here (embeddings and rerank both use it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from typing import Any

from redis.exceptions import RedisError

from common import keys
from common.errors import DeadlineExceeded, EngineFailure, ServiceError
from common.protocol import Message, MessageKind, now_ms
from common.settings import Settings
from worker.batcher import BatchQueue, Item, Pending
from worker.engines.base import Engine
from worker.handler import Handler
from worker.models import ModelManager
from worker.transport import Delivery, WorkerTransport

log = logging.getLogger(__name__)

BATCH_ROUND_S = 0.1  # engine time of one round of batch-lane work (interactive jobs wait at most that)


class BatchedHandler(Handler):
    def __init__(self, settings: Settings, models: ModelManager, transport: WorkerTransport,
                 queue: BatchQueue, max_waiting: int) -> None:
        super().__init__(settings, models, transport)
        self.queue = queue
        self.max_waiting = max_waiting
        self._deliveries: dict[str, Delivery] = {}
        self._rate: float | None = None  # sequences per second of recent rounds
        self._work = asyncio.Event()

    @abstractmethod
    async def prepare(self, delivery: Delivery) -> Pending:
        """Validate and tokenise one job (raise a ServiceError to answer it with that error)."""

    @abstractmethod
    def compute(self, engine: Engine, items: list[Item]) -> list[Any]:
        """One result per item (blocking: runs in a thread)."""

    @abstractmethod
    def body(self, pending: Pending) -> dict[str, Any]:
        """The result message of a job whose every sequence is done."""

    def capacity(self) -> int:
        return self.max_waiting - len(self._deliveries)

    def idle(self) -> bool:
        return not self._deliveries

    async def run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while len(self.queue):
                try:
                    await self.serve_round()
                except (RedisError, OSError) as exc:  # Redis away mid-round: keep the worker alive
                    log.warning("round failed (%s); its jobs stay pending in Redis and are read again", exc)
                    self._forget_unanswered()
                    await asyncio.sleep(0.5)
                self.room.set()

    def _forget_unanswered(self) -> None:
        """Drop every admitted, unanswered job from memory; the reader walks our pending entries again."""
        self.queue.drop(lambda _: True)
        self.transport.forget(list(self._deliveries.values()))
        self._deliveries.clear()

    async def admit(self, delivery: Delivery) -> None:
        try:
            pending = await self.prepare(delivery)
        except ServiceError as exc:
            await self.transport.reply(delivery, Message.error(exc))
            return
        pending.batch = keys.is_batch_stream(delivery.stream)
        self._deliveries[delivery.job.id] = delivery
        self.queue.add(pending)
        self._work.set()

    async def serve_round(self) -> None:
        await self._drop_gone()
        round_ = self.queue.next_round()
        if round_ is None:
            return
        model, batches = round_
        try:
            engine = await self.models.get(model, self.model_type)
        except ServiceError as exc:
            await self._fail({it.pending for b in batches for it in b}, exc)
            return
        started, seqs = time.perf_counter(), sum(len(b) for b in batches)
        for batch in batches:
            await self._run_batch(engine, batch)
        self._pace(seqs, time.perf_counter() - started)

    def _pace(self, seqs: int, seconds: float) -> None:
        """Size batch-lane rounds to about BATCH_ROUND_S of engine time at the speed just measured."""
        if seconds <= 0 or seqs <= 0:
            return
        rate = seqs / seconds
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
        self.queue.batch_round_items = max(1, min(self.queue.max_items, int(self._rate * BATCH_ROUND_S)))

    async def _run_batch(self, engine: Engine, batch: list[Item]) -> None:
        live = [it for it in batch if it.pending.job.id in self._deliveries]
        if not live:
            return
        try:
            results = await asyncio.to_thread(self.compute, engine, live)
        except Exception as exc:  # engine failure (e.g. out of memory): answer, don't crash
            log.exception("%s batch failed", self.model_type)
            await self._fail({it.pending for it in live}, EngineFailure(f"{self.model_type} failed: {exc}"))
            return
        for item, result in zip(live, results, strict=True):
            if item.pending.fill(item.index, result):
                await self._finish(item.pending)

    async def _finish(self, pending: Pending) -> None:
        delivery = self._deliveries.pop(pending.job.id)
        await self.transport.reply(delivery, Message(MessageKind.RESULT, self.body(pending)))

    async def _fail(self, pendings: set[Pending], exc: ServiceError) -> None:
        for pending in pendings:
            delivery = self._deliveries.pop(pending.job.id, None)
            if delivery is not None:
                await self.transport.reply(delivery, Message.error(exc))

    async def _drop_gone(self) -> None:
        """Skip jobs whose caller has gone or whose deadline has passed."""
        waiting = self.queue.waiting()
        gone = await self.transport.cancelled([p.job.id for p in waiting])
        now = now_ms()
        expired = {p.job.id for p in waiting if p.job.deadline_ms and p.job.deadline_ms < now}
        for pending in self.queue.drop(lambda p: p.job.id in gone or p.job.id in expired):
            delivery = self._deliveries.pop(pending.job.id)
            if pending.job.id in expired:
                await self.transport.reply(delivery, Message.error(DeadlineExceeded("deadline passed")))
            else:
                await self.transport.ack(delivery.stream, delivery.entry_id)
