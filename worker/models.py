"""The catalog of discovered models, their cheap preprocessors, and how to build each one's engine.

Which engines are resident is the scheduler's business (worker/scheduling.py); this module only
knows the folders: `rescan`, `info` (checks id and type), `inputs` (tokenizer and limits, kept apart
from the weights so jobs are admitted without loading a model), and `make_engine`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.discovery import Catalog, ModelInfo, scan_models
from common.errors import EngineFailure, InvalidRequest, ModelNotFound, ServiceError
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import TRANSFORMERS_IMPORT, Engine
from worker.scheduler.planner import ChatEngineKind, Placement

log = logging.getLogger(__name__)


def engine_class(model_type: ModelType) -> type[Engine]:
    if model_type is ModelType.EMBEDDING:
        from worker.engines.embedding import EmbeddingEngine

        return EmbeddingEngine
    if model_type is ModelType.RERANKER:
        from worker.engines.rerank import RerankEngine

        return RerankEngine
    raise InvalidRequest(f"this worker cannot serve {model_type} models yet", code="unsupported_model")


def chat_engine_kind(info: ModelInfo, settings: Settings, exact: bool = True) -> ChatEngineKind:
    """Which engine serves a chat model: the folder's `chat_engine` option, else LLM_CHAT_ENGINE (auto: vLLM
    when it is installed and knows the architecture). `exact=False` skips the architecture check, which
    imports vLLM (seconds): the planner sizes an auto model as vLLM whenever vLLM is installed."""
    choice = str(info.options.get("chat_engine", settings.chat_engine))
    if choice != "auto":
        return "vllm" if choice == "vllm" else "transformers"
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    if not exact:
        return "vllm"
    from worker.engines.vllm_chat import vllm_supports

    return "vllm" if vllm_supports(info.architecture) else "transformers"


def make_engine(info: ModelInfo, settings: Settings, placement: Placement | None = None) -> Engine:
    """The engine for a model (chat: by `chat_engine_kind`). Quantized checkpoints need vLLM: the
    transformers engines refuse them. Blocking: imports (one thread at a time, see `hf_import`)."""
    with TRANSFORMERS_IMPORT:
        return _make_engine(info, settings, placement)


def _make_engine(info: ModelInfo, settings: Settings, placement: Placement | None) -> Engine:
    if info.type is ModelType.EMBEDDING and info.options.get("engine") == "noop":  # benchmarks: bench/dispatch.py
        from worker.engines.noop import NoopEngine

        return NoopEngine(info, settings, placement)
    vllm = info.type is ModelType.CHAT and chat_engine_kind(info, settings) == "vllm"
    if info.quantization is not None and not vllm:
        raise EngineFailure(f"model '{info.id}' is {info.quantization}-quantized; the transformers engine cannot "
                            "load quantized checkpoints (serve it with vLLM)", code="model_load_failed")
    if info.type is not ModelType.CHAT:
        return engine_class(info.type)(info, settings, placement)
    if vllm:
        from worker.engines.vllm_chat import VllmChatEngine

        return VllmChatEngine(info, settings, placement)
    from worker.engines.hf_chat import TransformersChatEngine

    return TransformersChatEngine(info, settings, placement)


def inputs_class(model_type: ModelType, options: dict[str, Any] | None = None) -> Callable[[Path, Settings], Any]:
    """The cheap per-model preprocessor (tokenizer and limits) used to admit jobs."""
    if model_type is ModelType.EMBEDDING and (options or {}).get("engine") == "noop":
        from worker.engines.noop import NoopInputs

        return NoopInputs
    if model_type is ModelType.EMBEDDING:
        from worker.engines.embedding import EmbeddingInputs

        return EmbeddingInputs
    if model_type is ModelType.RERANKER:
        from worker.engines.rerank import RerankInputs

        return RerankInputs
    if model_type is ModelType.CHAT:
        from worker.engines.chat_base import ChatInputs

        return ChatInputs
    raise InvalidRequest(f"this worker cannot serve {model_type} models yet", code="unsupported_model")


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog = Catalog({}, [])
        self._inputs: dict[str, Any] = {}
        self._inputs_lock = asyncio.Lock()

    def rescan(self) -> Catalog:
        self.catalog = scan_models(self.settings.models_dir, self.settings.load_policy)
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
        if info.type is not model_type:
            raise InvalidRequest(f"model '{model_id}' is a {info.type} model, not {model_type}",
                                 param="model", code="wrong_model_type")
        return info

    async def inputs(self, model_id: str, model_type: ModelType) -> Any:
        """The model's preprocessor (tokenizer, limits), kept apart from its weights."""
        info = self.info(model_id, model_type)
        key = f"{model_id}\0{info.path}"
        async with self._inputs_lock:  # one load per model, even when many of its jobs arrive at once
            prep = self._inputs.get(key)
            if prep is None:
                try:
                    factory = inputs_class(model_type, info.options)
                    prep = await asyncio.to_thread(factory, Path(info.path), self.settings)
                except ServiceError:
                    raise
                except Exception as exc:
                    raise EngineFailure(f"model '{model_id}' failed to load its tokenizer: {exc}",
                                        code="model_load_failed") from exc
                self._inputs[key] = prep
        return prep
