"""Embedding jobs: admit (tokenise, validate), batch by token budget, run, reply per job."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from common.discovery import ModelType
from common.errors import DeadlineExceeded, EngineFailure, ServiceError
from common.protocol import Message, MessageKind, now_ms
from common.settings import Settings
from worker.batcher import BatchQueue, Item, Pending
from worker.engines.embedding import EmbeddingEngine, shape_vector
from worker.handler import Handler
from worker.models import ModelManager
from worker.transport import Delivery, WorkerTransport

log = logging.getLogger(__name__)


class EmbeddingHandler(Handler):
    model_type = ModelType.EMBEDDING

    def __init__(self, settings: Settings, models: ModelManager, transport: WorkerTransport) -> None:
        super().__init__(settings, models, transport)
        self.queue = BatchQueue(settings.embedding_batch_tokens, settings.embedding_max_batch_size)
        self.max_waiting = 4 * settings.embedding_max_batch_size
        self._deliveries: dict[str, Delivery] = {}
        self._work = asyncio.Event()

    def capacity(self) -> int:
        return self.max_waiting - len(self._deliveries)

    def idle(self) -> bool:
        return not self._deliveries

    async def run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while len(self.queue):
                await self.serve_round()
                self.room.set()

    async def admit(self, delivery: Delivery) -> None:
        job = delivery.job
        try:
            prep = await self.models.inputs(job.model, self.model_type)
            prep.check_dimensions(job.payload.get("dimensions"))
            seqs = await asyncio.to_thread(prep.tokenize, job.payload["input"])
        except ServiceError as exc:
            await self.transport.reply(delivery, Message.error(exc))
            return
        self._deliveries[job.id] = delivery
        self.queue.add(Pending(job, delivery.entry_id, seqs))
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
        assert isinstance(engine, EmbeddingEngine)
        for batch in batches:
            await self._run_batch(engine, batch)

    async def _run_batch(self, engine: EmbeddingEngine, batch: list[Item]) -> None:
        live = [it for it in batch if it.pending.job.id in self._deliveries]
        if not live:
            return
        try:
            vectors = await asyncio.to_thread(engine.embed, [it.seq for it in live])
        except Exception as exc:  # engine failure (e.g. out of memory): answer, don't crash
            log.exception("embedding batch failed")
            await self._fail({it.pending for it in live}, EngineFailure(f"embedding failed: {exc}"))
            return
        for item, vector in zip(live, vectors, strict=True):
            dims = item.pending.job.payload.get("dimensions")
            if item.pending.fill(item.index, shape_vector(vector, dims)):
                await self._finish(item.pending)

    async def _finish(self, pending: Pending) -> None:
        body: dict[str, Any] = {"data": pending.results, "prompt_tokens": pending.tokens}
        delivery = self._deliveries.pop(pending.job.id)
        await self.transport.reply(delivery, Message(MessageKind.RESULT, body))

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
