"""What the worker loop needs from each model type's job handler."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import ClassVar

from common.protocol import ModelType
from common.settings import Settings
from worker.models import ModelManager
from worker.scheduler import Scheduler
from worker.transport import Delivery, WorkerTransport


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
