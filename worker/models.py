"""Loaded engines, at most `LLM_MODEL_CACHE_SIZE` per model type, least recently used evicted.

The scheduler issue replaces this with a policy driven by queue pressure; until then a request for
a model that is not loaded loads it (evicting the least recently used one of its type).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.discovery import Catalog, ModelInfo, ModelType, scan_models
from common.errors import EngineFailure, InvalidRequest, ModelNotFound, ServiceError
from common.settings import Settings
from worker.engines.base import Engine

log = logging.getLogger(__name__)


def engine_class(model_type: ModelType) -> type[Engine]:
    if model_type is ModelType.EMBEDDING:
        from worker.engines.embedding import EmbeddingEngine

        return EmbeddingEngine
    raise InvalidRequest(f"this worker cannot serve {model_type} models yet", code="unsupported_model")


def inputs_class(model_type: ModelType) -> Callable[[Path, Settings], Any]:
    """The cheap per-model preprocessor (tokenizer and limits) used to admit jobs."""
    if model_type is ModelType.EMBEDDING:
        from worker.engines.embedding import EmbeddingInputs

        return EmbeddingInputs
    raise InvalidRequest(f"this worker cannot serve {model_type} models yet", code="unsupported_model")


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog = Catalog({}, [])
        self._loaded: dict[ModelType, OrderedDict[str, Engine]] = {t: OrderedDict() for t in ModelType}
        self._inputs: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self.loads = 0

    def rescan(self) -> Catalog:
        self.catalog = scan_models(self.settings.models_dir)
        for problem in self.catalog.problems:
            log.warning("model folder %r not served: %s", problem.path, problem.error)
        return self.catalog

    def info(self, model_id: str, model_type: ModelType) -> ModelInfo:
        info = self.catalog.models.get(model_id)
        if info is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
        if info.type is not model_type:
            raise InvalidRequest(f"model '{model_id}' is a {info.type} model, not {model_type}",
                                 param="model", code="wrong_model_type")
        return info

    async def inputs(self, model_id: str, model_type: ModelType) -> Any:
        """The model's preprocessor (tokenizer, limits), kept apart from its weights."""
        info = self.info(model_id, model_type)
        key = f"{model_id}\0{info.path}"
        prep = self._inputs.get(key)
        if prep is None:
            try:
                prep = await asyncio.to_thread(inputs_class(model_type), Path(info.path), self.settings)
            except ServiceError:
                raise
            except Exception as exc:
                raise EngineFailure(f"model '{model_id}' failed to load its tokenizer: {exc}",
                                    code="model_load_failed") from exc
            self._inputs[key] = prep
        return prep

    async def get(self, model_id: str, model_type: ModelType) -> Engine:
        """The loaded engine for a model, loading it (and evicting LRU of its type) when needed."""
        async with self._lock:
            cache = self._loaded[model_type]
            if model_id in cache:
                cache.move_to_end(model_id)
                return cache[model_id]
            info = self.info(model_id, model_type)
            while len(cache) >= self.settings.model_cache_size:
                old_id, old = cache.popitem(last=False)
                log.info("unloading %s", old_id)
                await asyncio.to_thread(old.unload)
            engine = engine_class(model_type)(info, self.settings)
            started = time.perf_counter()
            try:
                await asyncio.to_thread(engine.load)
            except ServiceError:
                raise
            except Exception as exc:  # a model folder that fails to load answers its jobs, no crash
                raise EngineFailure(f"model '{model_id}' failed to load: {exc}", code="model_load_failed") from exc
            self.loads += 1
            log.info("loaded %s in %.2f s", model_id, time.perf_counter() - started)
            cache[model_id] = engine
            return engine
