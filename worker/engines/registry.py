"""Which engine serves a model, and which cheap preprocessor admits its jobs: one table by model type and engine
name. Classes are named by import path and imported on first use (vLLM and transformers take seconds)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from common.discovery import Catalog, ModelInfo
from common.errors import EngineFailure
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import TRANSFORMERS_IMPORT, Engine
from worker.policy.planner import ChatEngineKind, Placement

# model type -> engine name -> (preprocessor, engine). "noop" (benchmarks: bench/dispatch.py) is chosen per folder
# with `{"options": {"engine": "noop"}}`; chat models by `chat_engine` (below).
REGISTRY: dict[ModelType, dict[str, tuple[str, str]]] = {
    ModelType.EMBEDDING: {
        "transformers": ("worker.engines.embedding:EmbeddingInputs", "worker.engines.embedding:EmbeddingEngine"),
        "noop": ("worker.engines.noop:NoopInputs", "worker.engines.noop:NoopEngine"),
    },
    ModelType.RERANKER: {
        "transformers": ("worker.engines.rerank:RerankInputs", "worker.engines.rerank:RerankEngine"),
    },
    ModelType.CHAT: {
        "vllm": ("worker.engines.chat_base:ChatInputs", "worker.engines.vllm_chat:VllmChatEngine"),
        "transformers": ("worker.engines.chat_base:ChatInputs", "worker.engines.hf_chat:TransformersChatEngine"),
    },
}


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


def engine_name(info: ModelInfo, settings: Settings, exact: bool = True) -> str:
    if info.type is ModelType.CHAT:
        return chat_engine_kind(info, settings, exact)
    return str(info.options.get("engine", "transformers"))


def _paths(info: ModelInfo, name: str) -> tuple[str, str]:
    found = REGISTRY[info.type].get(name)
    if found is None:
        raise EngineFailure(f"model '{info.id}': no engine '{name}' for {info.type} models "
                            f"(one of {sorted(REGISTRY[info.type])})", code="model_load_failed")
    return found


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    with TRANSFORMERS_IMPORT:  # engine modules import transformers and vLLM: one thread at a time (hf_import)
        return getattr(importlib.import_module(module), name)


def inputs_class(info: ModelInfo, settings: Settings) -> Any:
    """The class of the model's cheap preprocessor (tokenizer, limits): `cls(folder, settings)`. (Both chat
    engines admit with the same one, so this never imports vLLM to tell them apart.)"""
    return _load(_paths(info, engine_name(info, settings, exact=False))[0])


def make_engine(info: ModelInfo, settings: Settings, placement: Placement | None = None) -> Engine:
    """The engine for a model. Quantized checkpoints need vLLM: the transformers engines refuse them."""
    name = engine_name(info, settings)
    if info.quantization is not None and name != "vllm":
        raise EngineFailure(f"model '{info.id}' is {info.quantization}-quantized; the transformers engine cannot "
                            "load quantized checkpoints (serve it with vLLM)", code="model_load_failed")
    cls: type[Engine] = _load(_paths(info, name)[1])
    return cls(info, settings, placement)


def warm_up(catalog: Catalog, settings: Settings) -> None:
    """Import (and cache) what the catalog's engines need ahead of their first load (blocking: run it in a
    thread). Chat engines last: vLLM takes seconds, and a first embedding load waits for the import lock, which
    each engine's `warm_up` takes around its imports (and `_load` around the engine module's)."""
    groups: dict[tuple[ModelType, str], list[ModelInfo]] = {}
    for info in catalog.models.values():
        groups.setdefault((info.type, engine_name(info, settings, exact=False)), []).append(info)
    for (model_type, name), models in sorted(groups.items(), key=lambda g: (g[0][0] is ModelType.CHAT, g[0])):
        found = REGISTRY[model_type].get(name)
        if found is not None:
            _load(found[1]).warm_up(models, settings)
