"""The catalog of discovered models, their cheap preprocessors, and how to build each one's engine.

Which engines are resident is the scheduler's business (worker/scheduler.py); this module only
knows the folders: `rescan`, `info` (checks id and type) and `inputs` (tokenizer and limits, kept apart
from the weights so jobs are admitted without loading a model); engines come from `worker/engines/registry.py`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from common.discovery import Catalog, ModelInfo, scan_models
from common.errors import EngineFailure, ModelNotFound, ServiceError
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.registry import chat_engine_kind, inputs_class
from worker.policy.planner import ChatEngineKind

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog = Catalog({}, [])
        self._inputs: dict[str, Any] = {}
        self._inputs_lock = asyncio.Lock()

    def rescan(self) -> Catalog:
        self.catalog = scan_models(self.settings.models_dir, self.settings.load_policy, self.settings.default_models)
        for problem in self.catalog.problems:
            log.warning("model folder %r not served: %s", problem.path, problem.error)
        return self.catalog

    def chat_engines(self) -> dict[str, ChatEngineKind]:
        """The engine of each chat model in the catalog (the planner sizes them differently)."""
        return {m.id: chat_engine_kind(m, self.settings, exact=False) for m in self.catalog.models.values()
                if m.type is ModelType.CHAT}

    def info(self, model_id: str, model_type: ModelType) -> ModelInfo:
        info = self.catalog.models.get(model_id)
        if info is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
        info.check_type(model_type)
        return info

    async def inputs(self, model_id: str, model_type: ModelType) -> Any:
        """The model's preprocessor (tokenizer, limits), kept apart from its weights."""
        info = self.info(model_id, model_type)
        key = f"{model_id}\0{info.path}"
        async with self._inputs_lock:  # one load per model, even when many of its jobs arrive at once
            prep = self._inputs.get(key)
            if prep is None:
                try:
                    factory = await asyncio.to_thread(inputs_class, info, self.settings)
                    prep = await asyncio.to_thread(factory, Path(info.path), self.settings)
                except ServiceError:
                    raise
                except Exception as exc:
                    raise EngineFailure(f"model '{model_id}' failed to load its tokenizer: {exc}",
                                        code="model_load_failed") from exc
                self._inputs[key] = prep
        return prep
