"""Chat and completion jobs: admit (render, check the window), stream every choice's deltas back.

Each job runs as its own task, so the engine batches all of them continuously. Every sequence of a
job (prompts x n) is one engine request; their deltas are merged into one message per wake-up.
A poller aborts jobs whose caller has gone or whose deadline passed, within `POLL_S`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError

from common.deltas import merge_wire
from common.errors import DeadlineExceeded, EngineFailure, ServiceError
from common.logs import request_context
from common.protocol import Message, MessageKind, ModelType, now_ms
from common.settings import Settings
from worker.engines.chat_base import ChatEngine, ChatInputs, Delta, GenerationParams, check_schemas
from worker.engines.chat_output import OutputPlan, plan_output
from worker.handlers.base import Handler, admission_work, small_text
from worker.models import ModelManager
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport

log = logging.getLogger(__name__)

POLL_S = 0.2
SLOW_S = 0.02  # LLM_DEBUG_SLOW_ON: a job's deltas this far apart, so a test can leave mid-answer
MAX_RUNNING_JOBS = 256


@dataclass(frozen=True)
class Sequence:
    index: int  # the choice index: prompt number x n + sample number
    prompt: list[int]
    params: GenerationParams
    output: OutputPlan | None = None  # how the model's parsers read it (chat with tools or think blocks)


class ChatHandler(Handler):
    model_type = ModelType.CHAT

    def __init__(self, settings: Settings, models: ModelManager, scheduler: Scheduler,
                 transport: WorkerTransport) -> None:
        super().__init__(settings, models, scheduler, transport)
        self._tasks: dict[str, tuple[Delivery, asyncio.Task[None]]] = {}
        self._expired: set[str] = set()
        self._gone_at: dict[str, int] = {}  # request id -> when its caller left (ms)
        self.aborts = 0
        self.skipped = 0  # jobs whose caller had left before they started
        self.last_abort_latency_ms = -1

    def capacity(self) -> int:
        return MAX_RUNNING_JOBS - len(self._tasks)

    def idle(self) -> bool:
        return not self._tasks

    def stats(self) -> dict[str, int]:
        engines = [e for e in self.scheduler.engines.values() if isinstance(e, ChatEngine)]
        return {"chat_jobs": len(self._tasks), "chat_sequences": sum(e.running() for e in engines),
                "chat_aborts": self.aborts, "chat_skipped": self.skipped,
                "chat_last_abort_latency_ms": self.last_abort_latency_ms}

    async def admit(self, delivery: Delivery) -> None:
        """Start the job's task at once: jobs are prepared concurrently, not one after another."""
        job = delivery.job
        if job.id in self._tasks:  # delivered twice (a takeover and a walk): served once
            return
        with request_context(job.request_id):  # the job's log lines carry its request id
            task = asyncio.create_task(self._serve(delivery))
        self._tasks[job.id] = (delivery, task)
        task.add_done_callback(lambda _: self._done(job.id))

    async def _prepare(self, delivery: Delivery) -> tuple[list[Sequence], int] | None:
        """Render and check the prompts; None (and acknowledged) when the caller has already left. Only a job that
        waited `POLL_S` or longer is looked up first: a fresher one starts at once (one Redis round trip less
        before its first token), and the poller aborts it within `POLL_S` if its caller has gone."""
        job = delivery.job
        if now_ms() - job.created_ms >= POLL_S * 1000 and await self.transport.cancelled([job.id]):
            self.skipped += 1
            await self.transport.ack(delivery.stream, delivery.entry_id)
            return None
        prep: ChatInputs = await self.models.inputs(job.model, self.model_type)
        return await admission_work(cheap_to_render(job.payload), self._sequences, prep, job.payload)

    def _done(self, request_id: str) -> None:
        self._tasks.pop(request_id, None)
        self._expired.discard(request_id)
        self._gone_at.pop(request_id, None)
        self.room.set()

    @staticmethod
    def _sequences(prep: ChatInputs, payload: dict[str, Any]) -> tuple[list[Sequence], int]:
        """One engine sequence per (prompt, sample), and the prompt tokens counted once per prompt."""
        n = int(payload.get("n", 1))
        chat: dict[str, Any] = payload.get("chat") or {}
        prep.parsers.check(chat)
        tools = chat.get("tools") if chat.get("tool_choice") != "none" else None
        out, prompt_tokens = [], 0
        for p, source in enumerate(payload["prompts"]):
            messages = source.get("messages")
            kwargs = prep.template_kwargs(chat) if messages is not None else {}
            ids = prep.render(messages, source.get("prompt"), chat.get("tools"), kwargs)
            prompt_tokens += len(ids)
            params = GenerationParams.from_wire(payload["params"], prep.budget(len(ids), payload.get("max_tokens")))
            check_schemas(params, tools)
            plan = None
            if messages is not None:
                plan, params = plan_output(prep.parsers, chat, kwargs, ids, params)
            for j in range(n):
                seed = None if params.seed is None else params.seed + j
                out.append(Sequence(p * n + j, ids, replace(params, seed=seed), plan))
        return out, prompt_tokens

    async def run(self) -> None:
        """Abort jobs whose caller has gone or whose deadline has passed."""
        while True:
            await asyncio.sleep(POLL_S)
            if not self._tasks:
                continue
            ids = list(self._tasks)
            try:
                gone = await self.transport.cancelled(ids)
            except (RedisError, OSError) as exc:  # Redis away: keep serving, look again next time
                log.warning("cancel poll failed: %s", exc)
                continue
            now = now_ms()
            for request_id in ids:
                entry = self._tasks.get(request_id)
                if entry is None:
                    continue
                delivery, task = entry
                if delivery.job.deadline_ms and delivery.job.deadline_ms < now:
                    self._expired.add(request_id)
                    task.cancel()
                elif request_id in gone:
                    self._gone_at[request_id] = gone[request_id]
                    task.cancel()

    async def _serve(self, delivery: Delivery) -> None:
        job = delivery.job
        try:
            prepared = await self._prepare(delivery)
            if prepared is None:
                return
            sequences, prompt_tokens = prepared
            engine = await self.scheduler.acquire(job.id, job.model, self.model_type, job.created_ms / 1000)
            assert isinstance(engine, ChatEngine)
            for seq in sequences:
                engine.check(seq.params)
            completion = await self._stream(delivery, engine, sequences)
            self.scheduler.release(job.id)  # the model may switch while the last message is written
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion}
            await self.transport.reply(delivery, Message(MessageKind.DONE, {"usage": usage}))
        except asyncio.CancelledError:
            if job.id in self._expired:
                await self.transport.reply(delivery, Message.error(DeadlineExceeded("deadline passed")))
            else:
                self._count_abort(job.id)
                await self.transport.ack(delivery.stream, delivery.entry_id, job.id)
        except ServiceError as exc:
            await self.transport.reply(delivery, Message.error(exc))
        except Exception as exc:
            log.exception("chat job %s failed", job.id)
            await self.transport.reply(delivery, Message.error(EngineFailure(f"generation failed: {exc}")))
        finally:
            self.scheduler.release(job.id)

    def _count_abort(self, request_id: str) -> None:
        """The engine has aborted the job's sequences: count it, and how long after the caller left."""
        self.aborts += 1
        gone_at = self._gone_at.get(request_id)
        if gone_at is not None:
            self.last_abort_latency_ms = max(0, now_ms() - gone_at)

    async def _stream(self, delivery: Delivery, engine: ChatEngine, sequences: list[Sequence]) -> int:
        """Stream every sequence's deltas (each engine step's in one message); the completion tokens. The
        messages are sent without waiting for their write: the transport writes one step's for every job at once."""
        slow = self.settings.debug_slow_on
        pause = SLOW_S if slow and slow in repr(delivery.job.payload) else 0.0
        if len(sequences) == 1:  # the common case: no task and queue between the engine and the transport
            return await self._stream_one(delivery, engine, sequences[0], pause)
        queue: asyncio.Queue[tuple[int, Delta | BaseException]] = asyncio.Queue()

        async def pump(seq: Sequence) -> None:
            try:
                async for delta in self._deltas(delivery, engine, seq, pause):
                    queue.put_nowait((seq.index, delta))
            except Exception as exc:
                queue.put_nowait((seq.index, exc))

        pumps = [asyncio.create_task(pump(seq)) for seq in sequences]
        completion, open_ = 0, len(sequences)
        try:
            while open_:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                choices = []
                for index, item in batch:
                    if isinstance(item, BaseException):
                        raise item
                    completion += item.tokens
                    open_ -= item.finish_reason is not None
                    choices.append(item.wire(index))
                self.transport.send(delivery, Message(MessageKind.DELTA, {"choices": merge_wire(choices)}))
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        return completion

    async def _stream_one(self, delivery: Delivery, engine: ChatEngine, seq: Sequence, pause: float) -> int:
        completion = 0
        async for delta in self._deltas(delivery, engine, seq, pause):
            completion += delta.tokens
            self.transport.send(delivery, Message(MessageKind.DELTA, {"choices": [delta.wire(seq.index)]}))
        return completion

    @staticmethod
    async def _deltas(delivery: Delivery, engine: ChatEngine, seq: Sequence, pause: float) -> AsyncIterator[Delta]:
        """One sequence's deltas as the model's parsers read them (LLM_DEBUG_SLOW_ON: `pause` apart)."""
        reader = seq.output.reader() if seq.output else None
        async for delta in engine.generate(f"{delivery.job.id}-{seq.index}", seq.prompt, seq.params):
            yield reader.feed(delta) if reader else delta
            if pause:
                await asyncio.sleep(pause)


def cheap_to_render(payload: dict[str, Any]) -> bool:
    """Short prompts (`small_text`), with no tools and no response schema to compile."""
    if (payload.get("chat") or {}).get("tools") or (payload.get("params") or {}).get("json"):
        return False
    return small_text(payload.get("prompts"))
