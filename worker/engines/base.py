"""The engine boundary: every model the worker serves is an Engine of one model type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from common.discovery import ModelInfo, ModelType
from common.settings import Settings


class Engine(ABC):
    """A loaded model. `load`/`unload` are blocking (run them off the event loop)."""

    model_type: ClassVar[ModelType]

    def __init__(self, info: ModelInfo, settings: Settings) -> None:
        self.info = info
        self.settings = settings

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def unload(self) -> None: ...


def pick_device(settings: Settings) -> str:
    import torch

    if settings.device != "auto":
        return settings.device
    return "cuda" if torch.cuda.is_available() else "cpu"
