"""What the worker loop needs from each model type's job handler."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from common.protocol import ModelType
from common.settings import Settings
from worker.models import ModelManager
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport

T = TypeVar("T")

# Admission work (tokenising, rendering) on at most this much text (characters; a token id counts one) runs on the
# event loop: at most about 1 ms on the 2-core machine (a chat render 0.6 ms; all-MiniLM-L6-v2's tokenizer 0.1 ms
# for 50 characters, 0.9 ms for 2,000). The rest goes to a thread: under load a thread's round trip took 1-5 ms
# (the thread contends for the GIL with the engine thread), and for one short text to embed it cost 0.6 ms of CPU
# against 0.27 ms for tokenising it on the loop.
INLINE_TEXT = 2000


def small_text(value: Any) -> bool:
    """At most `INLINE_TEXT` characters in the strings of `value` (dicts and lists walked; anything else counts one)."""
    size, pending = 0, [value]
    while pending and size <= INLINE_TEXT:
        item = pending.pop()
        if isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list):
            pending += item
        else:
            size += len(item) if isinstance(item, str) else 1
    return size <= INLINE_TEXT


async def admission_work(inline: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the event loop when `inline` (small work: `small_text`), else on a thread."""
    if inline:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


class Handler(ABC):
    """Admits jobs of one model type (fast) and serves them in its own `run` loop."""

    model_type: ClassVar[ModelType]

    def __init__(self, settings: Settings, models: ModelManager, scheduler: Scheduler,
                 transport: WorkerTransport) -> None:
        self.settings = settings
        self.models = models
        self.scheduler = scheduler  # acquire a job's engine, release it when the job is answered
        self.transport = transport
        self.room = asyncio.Event()  # set whenever capacity() may have grown

    @abstractmethod
    def capacity(self) -> int:
        """How many more jobs to take from Redis now (0: leave them for other workers)."""

    @abstractmethod
    async def admit(self, delivery: Delivery) -> None:
        """Validate and queue one job, or answer it with an error at once."""

    @abstractmethod
    async def run(self) -> None:
        """Serve admitted jobs until cancelled."""

    @abstractmethod
    def idle(self) -> bool:
        """Nothing admitted is still unanswered."""

    def stats(self) -> dict[str, int]:
        """Gauges published with the worker's heartbeat (status page, tests)."""
        return {}
