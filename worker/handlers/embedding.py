"""Embedding jobs: admit (tokenise, validate), batch by token budget, run, reply per job."""

from __future__ import annotations

from typing import Any

from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import Engine
from worker.engines.embedding import EmbeddingEngine, shape_vector
from worker.handlers.base import admission_work, small_text
from worker.handlers.batched import BatchedHandler, batch_tokens
from worker.microbatch import Item, MicroBatchQueue, Pending
from worker.models import ModelManager
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport


class EmbeddingHandler(BatchedHandler):
    model_type = ModelType.EMBEDDING

    def __init__(self, settings: Settings, models: ModelManager, scheduler: Scheduler,
                 transport: WorkerTransport) -> None:
        queue = MicroBatchQueue(batch_tokens(settings.embedding_batch_tokens, scheduler),
                           settings.embedding_max_batch_size)
        super().__init__(settings, models, scheduler, transport, queue,
                         max_waiting=4 * settings.embedding_max_batch_size)

    async def prepare(self, delivery: Delivery) -> Pending:
        job = delivery.job
        prep = await self.models.inputs(job.model, self.model_type)
        prep.check_dimensions(job.payload.get("dimensions"))
        inputs = job.payload["input"]
        seqs = await admission_work(small_text(inputs), prep.tokenize, inputs)
        return Pending(job, delivery.entry_id, seqs)

    def compute(self, engine: Engine, items: list[Item]) -> list[Any]:
        assert isinstance(engine, EmbeddingEngine)
        vectors = engine.embed([it.seq for it in items])
        return [shape_vector(v, it.pending.job.payload.get("dimensions")) for it, v in zip(items, vectors, strict=True)]

    def body(self, pending: Pending) -> dict[str, Any]:
        # `tokens` per input: a batch job carries many lines' inputs and splits the usage back per line.
        return {"data": pending.results, "prompt_tokens": pending.tokens, "tokens": [len(s) for s in pending.seqs]}
