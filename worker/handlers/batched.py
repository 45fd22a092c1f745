"""Handlers whose jobs are micro-batched by token budget: admit (tokenise), rounds of batches, reply.

A subclass says how to turn a job into a `Pending` (its sequences), how to run one batch on its
engine, and what a finished job's answer looks like; queueing, waiting for the model (the
scheduler grants each job once its model is resident), cancellation, deadlines, failures (a batch
that runs out of memory is retried in halves) and replies are shared here (embeddings and rerank).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.exceptions import RedisError

from common import keys
from common.errors import DeadlineExceeded, EngineFailure, ServiceError
from common.logs import request_context
from common.protocol import Message, MessageKind, now_ms
from common.settings import Settings
from worker import cpus
from worker.engines.base import Engine, free_memory, pick_device
from worker.handlers.base import Handler
from worker.microbatch import Item, MicroBatchQueue, Pending, batch_size
from worker.models import ModelManager
from worker.pacing import Pacer
from worker.policy.planner import default_batch_tokens
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport

log = logging.getLogger(__name__)

POLL_S = 0.2  # jobs waiting for their model are checked this often for a gone caller or a passed deadline
DROP_POLL_S = 0.05  # between batches, gone callers and passed deadlines are looked up at most this often
SLOW_S = 0.02  # LLM_DEBUG_SLOW_ON: a matching job's batches this much apart, so a test can hang up mid-job


class BatchedHandler(Handler):
    def __init__(self, settings: Settings, models: ModelManager, scheduler: Scheduler, transport: WorkerTransport,
                 queue: MicroBatchQueue, max_waiting: int) -> None:
        super().__init__(settings, models, scheduler, transport)
        self.queue = queue  # granted jobs: their model is resident and stays so until they are released
        self.max_waiting = max_waiting
        self._deliveries: dict[str, Delivery] = {}  # every admitted, unanswered job
        self._awaiting: dict[str, tuple[Pending, asyncio.Task[None]]] = {}  # admitted, waiting for their model
        self.pacer = Pacer()  # the micro-batches' size per model (worker/pacing.py)
        self._last_drop = 0.0
        self._work = asyncio.Event()
        self.oom_splits = 0
        self.oom_failures = 0
        self.dropped = 0  # jobs whose caller left before they were answered
        self.last_drop_latency_ms = -1  # caller gone (the API's cancel mark) -> its sequences dropped
        # Batches compute in lanes (worker/cpus.py): one thread each, so that torch's OpenMP keeps one team of
        # threads per lane (batches handed to whichever pool thread was free kept a team on each: four threads on
        # two cores). Each lane runs one batch at a time; on a CPU lanes share the cores.
        self.lanes = cpus.Lanes(str(self.model_type))
        self._batches: set[asyncio.Task[None]] = set()  # running, one per busy lane
        self._crashed: BaseException | None = None  # a batch's unexpected error, raised by `run` (the worker exits)

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

    def stats(self) -> dict[str, int]:
        kind = self.model_type
        return {f"{kind}_jobs": len(self._deliveries), f"{kind}_oom_splits": self.oom_splits,
                f"{kind}_oom_failures": self.oom_failures, f"{kind}_dropped": self.dropped,
                f"{kind}_last_drop_latency_ms": self.last_drop_latency_ms,
                f"{kind}_batch_target_ms": round(1000 * self.pacer.longest_target_s())}

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), POLL_S)
            self._work.clear()
            if self._crashed is not None:
                raise self._crashed
            try:
                if self._awaiting:
                    await self._drop_gone()
                while len(self.queue) and self.lanes.free():
                    await self.start_batch()
            except (RedisError, OSError) as exc:
                await self._outage(exc)

    async def _outage(self, exc: Exception) -> None:
        """Redis away mid-round: keep the worker alive."""
        log.warning("round failed (%s); its jobs stay pending in Redis and are read again", exc)
        self._forget_unanswered()
        await asyncio.sleep(0.5)
        self.room.set()

    def _forget_unanswered(self) -> None:
        """Drop every admitted, unanswered job from memory; the reader walks our pending entries again."""
        self.queue.drop(lambda _: True)
        for _, task in self._awaiting.values():
            task.cancel()
        self._awaiting.clear()
        for job_id in self._deliveries:
            self.scheduler.release(job_id)
        self.transport.forget(list(self._deliveries.values()))
        self._deliveries.clear()

    async def admit(self, delivery: Delivery) -> None:
        if delivery.job.id in self._deliveries:  # delivered twice (a takeover and a walk): served once
            return
        try:
            pending = await self.prepare(delivery)
        except ServiceError as exc:
            await self.transport.reply(delivery, Message.error(exc))
            return
        pending.batch = keys.is_batch_stream(delivery.stream)
        slow_on = self.settings.debug_slow_on
        pending.slow = slow_on is not None and slow_on in repr(delivery.job.payload)  # fault injection, tests only
        self._deliveries[delivery.job.id] = delivery
        with request_context(delivery.job.request_id):  # its wait for the model logs with its request id
            self._awaiting[delivery.job.id] = (pending, asyncio.create_task(self._await_model(pending)))

    async def _await_model(self, pending: Pending) -> None:
        """Queue the job once the scheduler grants it its model; answer it when the model cannot serve."""
        job = pending.job
        try:
            await self.scheduler.acquire(job.id, job.model, self.model_type, job.created_ms / 1000)
        except ServiceError as exc:
            self._awaiting.pop(job.id, None)
            with contextlib.suppress(RedisError, OSError):  # unanswered: read again after the outage
                await self._fail({pending}, exc)
            return
        self._awaiting.pop(job.id, None)
        engine = self.scheduler.engines.get(job.model)
        if engine is not None and engine.packed:
            self.queue.packed.add(job.model)
        else:
            self.queue.packed.discard(job.model)
        self.queue.add(pending)
        self._work.set()

    def _take(self, job_id: str) -> Delivery | None:
        """Forget an answered (or dropped) job, and let the scheduler switch its model away."""
        self.scheduler.release(job_id)
        return self._deliveries.pop(job_id, None)

    async def start_batch(self) -> None:
        """Start one micro-batch on a free lane: whoever's turn it is (see worker/microbatch.py), after dropping the
        jobs whose caller has gone or whose deadline passed."""
        now = time.monotonic()
        if now - self._last_drop >= DROP_POLL_S:
            self._last_drop = now
            await self._drop_gone()
        picked = self.queue.next_batch()
        if picked is None:
            return
        lane = self.lanes.take(pick_device(self.settings), self.settings.cpu_compute_lanes)
        task = asyncio.create_task(self._serve_batch(lane, *picked))
        self._batches.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._crashed = task.exception()
            self._work.set()

    async def _serve_batch(self, lane: ThreadPoolExecutor, model: str, batch: list[Item]) -> None:
        try:
            engine = self.scheduler.engines.get(model)
            if engine is None:  # cannot happen: a model with granted jobs is never evicted
                await self._fail({it.pending for it in batch}, EngineFailure(f"model '{model}' is not loaded"))
                return
            started = time.perf_counter()
            await self._run_batch(lane, engine, batch)
            if any(it.pending.slow for it in batch):
                await asyncio.sleep(SLOW_S)
                return  # not a measure of the engine's speed
            self._pace(model, batch_size(batch, model in self.queue.packed), time.perf_counter() - started)
        except (RedisError, OSError) as exc:
            await self._outage(exc)
        finally:
            self.lanes.give_back(lane)
            self.room.set()
            self._work.set()

    def _pace(self, model: str, padded_tokens: int, seconds: float) -> None:
        """Size the model's next micro-batches from this one's measure (worker/pacing.py)."""
        current = self.queue.paced_tokens.get(model, self.queue.budget_tokens // 4)
        paced = self.pacer.record(model, padded_tokens, seconds, current)
        if paced is not None:
            self.queue.paced_tokens[model] = paced

    async def _run_batch(self, lane: ThreadPoolExecutor, engine: Engine, batch: list[Item]) -> None:
        live = [it for it in batch if it.pending.job.id in self._deliveries]
        if not live:
            return
        try:
            threads = self.lanes.threads()
            results = await asyncio.get_running_loop().run_in_executor(lane, self._compute, engine, live, threads)
        except Exception as exc:  # engine failure: answer, don't crash; out of memory: retry in halves
            oom = _out_of_memory(exc)
            if oom:
                await asyncio.to_thread(free_memory, getattr(engine, "device", "cpu"))
            if oom and len(live) > 1:
                self.oom_splits += 1
                log.warning("%s batch of %d sequences ran out of memory; retrying it in halves", self.model_type,
                            len(live))
                await self._run_batch(lane, engine, live[: len(live) // 2])
                await self._run_batch(lane, engine, live[len(live) // 2:])
                return
            self.oom_failures += oom
            log.exception("%s batch failed (requests %s)", self.model_type,
                          ", ".join(sorted({str(it.pending.job.request_id) for it in live})))
            error = (EngineFailure(f"out of memory on one {self.model_type} input of {len(live[0].seq)} tokens; "
                                   "send shorter inputs", code="out_of_memory") if oom
                     else EngineFailure(f"{self.model_type} failed: {exc}"))
            await self._fail({it.pending for it in live}, error)
            return
        done = [it.pending for it, result in zip(live, results, strict=True) if it.pending.fill(it.index, result)]
        await asyncio.gather(*(self._finish(p) for p in done))  # their answers share one Redis round trip

    def _compute(self, engine: Engine, items: list[Item], threads: int | None) -> list[Any]:
        if threads is not None:
            cpus.set_compute_threads(threads)
        limit = self.settings.debug_oom_tokens  # fault injection for the out-of-memory drill
        if limit and max(len(it.seq) for it in items) * len(items) > limit:
            import torch

            raise torch.OutOfMemoryError(f"LLM_DEBUG_OOM_TOKENS: batch over {limit} padded tokens")
        return self.compute(engine, items)

    async def _finish(self, pending: Pending) -> None:
        delivery = self._take(pending.job.id)
        if delivery is not None:
            await self.transport.reply(delivery, Message(MessageKind.RESULT, self.body(pending)))

    async def _fail(self, pendings: set[Pending], exc: ServiceError) -> None:
        self.queue.drop(lambda p: p in pendings)  # a job failed in one batch leaves its other sequences too
        for pending in pendings:
            delivery = self._take(pending.job.id)
            if delivery is not None:
                await self.transport.reply(delivery, Message.error(exc))

    async def _drop_gone(self) -> None:
        """Skip jobs (queued, or waiting for their model) whose caller has gone or whose deadline passed."""
        waiting = self.queue.waiting() + [p for p, _ in self._awaiting.values()]
        if not waiting:
            return
        gone = await self.transport.cancelled([p.job.id for p in waiting])
        now = now_ms()
        expired = {p.job.id for p in waiting if p.job.deadline_ms and p.job.deadline_ms < now}
        dropped = self.queue.drop(lambda p: p.job.id in gone or p.job.id in expired)
        for job_id in [j for j in self._awaiting if j in gone or j in expired]:
            pending, task = self._awaiting.pop(job_id)
            task.cancel()
            dropped.append(pending)
        for pending in dropped:
            delivery = self._take(pending.job.id)
            if delivery is None:
                continue
            if pending.job.id in expired:
                await self.transport.reply(delivery, Message.error(DeadlineExceeded("deadline passed")))
            else:
                self.dropped += 1
                self.last_drop_latency_ms = max(0, now - gone[pending.job.id])
                await self.transport.ack(delivery.stream, delivery.entry_id)


def _out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def batch_tokens(configured: int | None, scheduler: Scheduler) -> int:
    """A configured padded-token budget per batch, else the planner's default for this device and budget (the
    activation workspace it plans for each model)."""
    return configured or default_batch_tokens(scheduler.budget)
