"""A no-op embedding engine: a fixed vector per input, no tokenizer, no weights (benchmarks only).

Selected per model folder with `llm-interface.json` `{"type": "embedding", "options": {"engine": "noop"}}`
(the folder needs only a `config.json`, `{}` will do). It measures what the service itself costs: HTTP,
the API, Redis, the worker's admission, batching and replies, with no model compute. `bench/dispatch.py`
uses it. Options: `dimension` (default 16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.discovery import read_options
from common.errors import InvalidRequest
from common.settings import Settings
from worker.engines.embedding import EmbeddingEngine

DEFAULT_DIMENSION = 16
MAX_LENGTH = 512
CHARS_PER_TOKEN = 4


class NoopInputs:
    """Stands in for `EmbeddingInputs`: one pseudo-token (id 0) per 4 characters, at most 512."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.settings = settings
        self.dimension = int(read_options(folder).get("dimension", DEFAULT_DIMENSION))
        self.max_length = MAX_LENGTH
        self.pad_id = 0

    def tokenize(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        if inputs and isinstance(inputs[0], list):
            return [[int(t) for t in x][: self.max_length] for x in inputs]
        return [[0] * max(1, min(len(str(x)) // CHARS_PER_TOKEN, self.max_length)) for x in inputs]

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and dimensions > self.dimension:
            raise InvalidRequest(f"dimensions={dimensions} is larger than the model's {self.dimension}",
                                 param="dimensions")


class NoopEngine(EmbeddingEngine):
    """`embed` returns the same unit vector for every sequence; load and unload cost nothing."""

    def load(self) -> None:
        self.inputs = NoopInputs(Path(self.info.path), self.settings)  # type: ignore[assignment]
        self.device = "cpu"
        self.vector = np.full(self.inputs.dimension, 1.0 / np.sqrt(self.inputs.dimension), dtype=np.float32)

    def unload(self) -> None:
        pass

    def park(self) -> bool:
        return True

    def wake(self) -> None:
        pass

    def embed(self, batch: list[list[int]]) -> np.ndarray:
        return np.tile(self.vector, (len(batch), 1))
