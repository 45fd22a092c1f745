"""The engine boundary: every model the worker serves is an Engine of one model type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from common.discovery import ModelInfo, ModelType
from common.settings import Settings

if TYPE_CHECKING:
    import torch


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


def pick_dtype(device: str, config_dtype: str | None) -> torch.dtype:
    """float32 on CPU (and for float32 checkpoints); the checkpoint's half precision on a GPU."""
    import torch

    if device == "cpu" or config_dtype in (None, "float32"):
        return torch.float32
    return torch.bfloat16 if config_dtype == "bfloat16" else torch.float16


def right_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a batch of sequences, right-padded to the longest (CPU, long)."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def free_memory(device: str) -> None:
    """Give back what an unloaded model held (call after dropping the last reference to it)."""
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def smallest_limit(*candidates: object) -> int:
    """The model's window: the smallest sane positive int among the candidates (configs, tokenizer)."""
    limits = [x for x in candidates if isinstance(x, int) and not isinstance(x, bool) and 0 < x < 10**7]
    if not limits:
        raise ValueError("the model states no maximum sequence length")
    return min(limits)
