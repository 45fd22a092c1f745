"""A chat model that starts in this process and moves to vLLM's own processes once it stays busy.

The in-process engine (`vllm_inprocess.py`) starts in about 2 s, but it runs vLLM's scheduler, the model and
the detokenizer on one thread, under this process's GIL (on a 2-core CPU it first streamed 0.67-0.95x the tokens
per second of vLLM's process layout at 8 to 64 concurrent streams; once the worker's own share per token was
halved, 1.11-1.13x, so the handover is off by default: `LLM_VLLM_HANDOVER_AFTER_S=0`). A model that has been busy for
LLM_VLLM_HANDOVER_AFTER_S starts `AsyncLLM` (vLLM's engine process) in the background; once it is up, new
requests go to it, the requests already running finish where they are, and the in-process engine is shut
down after the last of them. A model switched away before that never pays the processes' start.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from worker import cpus

log = logging.getLogger(__name__)

IDLE_GAP_S = 0.5  # no request running for this long (or a quarter of `after_s`, if less): the busy clock restarts


class HandoverEngine:
    def __init__(self, first: Any, start_next: Callable[[], Any], after_s: float, name: str) -> None:
        self.current = first
        self._start_next = start_next  # blocking: builds the engine to hand over to
        self._after_s = after_s
        self._name = name
        self._owners: dict[str, Any] = {}  # request id -> the engine it runs on
        self._retiring: list[Any] = []  # engines handed over from, until their last request ends
        self._busy_since: float | None = None
        self._idle_from: float | None = None  # when the last running request ended
        self._idle_gap_s = min(IDLE_GAP_S, after_s / 4)
        self._starting = False
        self._closed = False
        self.handovers = 0

    async def generate(self, prompt: Any, params: Any, request_id: str, **kwargs: Any) -> AsyncIterator[Any]:
        self._consider_handover()
        engine = self.current
        self._owners[request_id] = engine
        try:
            async for output in engine.generate(prompt, params, request_id, **kwargs):
                yield output
        finally:
            self._owners.pop(request_id, None)
            if not self._owners:
                self._idle_from = time.monotonic()
            self._retire_idle()

    async def abort(self, request_id: str) -> None:
        await self._owners.get(request_id, self.current).abort(request_id)

    async def sleep(self, level: int = 1) -> None:
        await self.current.sleep(level)

    async def wake_up(self) -> None:
        await self.current.wake_up()

    def get_num_unfinished_requests(self) -> int:
        return sum(int(e.get_num_unfinished_requests()) for e in [self.current, *self._retiring])

    def shutdown(self) -> None:
        """Blocking. A start under way shuts its engine down itself when it is done."""
        self._closed = True
        for engine in [*self._retiring, self.current]:
            engine.shutdown()
        self._retiring.clear()

    # ---- the handover ----

    def _consider_handover(self) -> None:
        """A request that finds the model idle for a moment (none of its requests running for `_idle_gap_s`)
        restarts its busy clock; the milliseconds between one client's requests, or between the rounds of
        clients in lockstep, do not. Busy for `after_s`: start the processes, once."""
        now = time.monotonic()
        if not self._owners and (self._idle_from is None or now - self._idle_from >= self._idle_gap_s):
            self._busy_since = now
        if self.handovers or self._starting or self._after_s <= 0 or self._busy_since is None:
            return
        if now - self._busy_since >= self._after_s:
            self._starting = True
            log.info("%s has been busy for %.0f s: starting vLLM's engine processes to hand over to", self._name,
                     now - self._busy_since)
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._start, args=(loop,), name=f"vllm-start-{self._name}", daemon=True).start()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        cpus.compute_anywhere()  # started from the event loop, perhaps pinned; vLLM's processes inherit this
        started = time.perf_counter()
        try:
            engine = self._start_next()
        except Exception:  # the in-process engine goes on serving
            log.exception("starting vLLM's engine processes for %s failed; it stays in this process", self._name)
            return
        seconds = time.perf_counter() - started
        try:
            loop.call_soon_threadsafe(self._adopt, engine, seconds)
        except RuntimeError:  # the loop is gone (the worker is exiting)
            engine.shutdown()

    def _adopt(self, engine: Any, seconds: float) -> None:
        if self._closed:  # unloaded while it started
            threading.Thread(target=engine.shutdown, daemon=True).start()
            return
        self._retiring.append(self.current)
        self.current = engine
        self.handovers += 1
        log.info("%s handed over to vLLM's engine processes (started in %.1f s); the in-process engine stops "
                 "after its running requests", self._name, seconds)
        self._retire_idle()

    def _retire_idle(self) -> None:
        busy = {id(e) for e in self._owners.values()}
        for engine in [e for e in self._retiring if id(e) not in busy]:
            self._retiring.remove(engine)
            threading.Thread(target=engine.shutdown, name=f"vllm-stop-{self._name}", daemon=True).start()
