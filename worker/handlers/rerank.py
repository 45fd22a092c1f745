"""Rerank jobs: one Pending per job, one sequence per (query, document) pair, batched by token budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import Engine
from worker.engines.rerank import RerankEngine, RerankInputs
from worker.handlers.base import admission_work, small_text
from worker.handlers.batched import BatchedHandler, batch_tokens
from worker.microbatch import Item, MicroBatchQueue, Pending
from worker.models import ModelManager
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport

# Jobs admitted at once: a rerank job may carry up to LLM_RERANK_MAX_DOCUMENTS pairs.
MAX_WAITING_JOBS = 64


@dataclass(eq=False)
class RerankPending(Pending):
    splits: list[int] = field(default_factory=list)  # per pair: leading tokens of token type 0


class RerankHandler(BatchedHandler):
    model_type = ModelType.RERANKER

    def __init__(self, settings: Settings, models: ModelManager, scheduler: Scheduler,
                 transport: WorkerTransport) -> None:
        queue = MicroBatchQueue(batch_tokens(settings.rerank_batch_tokens, scheduler), settings.rerank_max_batch_size)
        super().__init__(settings, models, scheduler, transport, queue, max_waiting=MAX_WAITING_JOBS)

    async def prepare(self, delivery: Delivery) -> Pending:
        job = delivery.job
        prep: RerankInputs = await self.models.inputs(job.model, self.model_type)
        payload = job.payload
        small = small_text([payload["query"], payload["documents"], payload.get("instruction")])
        encoded = await admission_work(
            small, prep.encode, payload["query"], payload["documents"], instruction=payload.get("instruction"),
            truncate=payload.get("truncate", True), max_tokens_per_doc=payload.get("max_tokens_per_doc"))
        return RerankPending(job, delivery.entry_id, encoded.seqs, splits=encoded.splits)

    def compute(self, engine: Engine, items: list[Item]) -> list[Any]:
        assert isinstance(engine, RerankEngine)
        pairs = []
        for it in items:
            assert isinstance(it.pending, RerankPending)
            pairs.append((it.seq, it.pending.splits[it.index]))
        scores = engine.score(pairs)
        return [float(row[1] if it.pending.job.payload.get("raw_scores") else row[0])
                for it, row in zip(items, scores, strict=True)]

    def body(self, pending: Pending) -> dict[str, Any]:
        return {"scores": pending.results, "prompt_tokens": pending.tokens}
