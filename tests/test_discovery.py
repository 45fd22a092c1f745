"""Tests for common.discovery: model folder scanning, type detection and path safety."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from common.discovery import (
    OVERRIDE_FILE,
    Catalog,
    DiscoveryProblem,
    LoadPolicy,
    ModelInfo,
    is_safe_model_id,
    scan_models,
)
from common.protocol import ModelType

CAUSAL = {"architectures": ["Qwen3ForCausalLM"], "torch_dtype": "bfloat16", "max_position_embeddings": 4096}
BERT = {"architectures": ["BertModel"], "torch_dtype": "float32", "max_position_embeddings": 512}
TEMPLATE = {"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}


def make_model(root: Path, name: str, config: Any = None, files: dict[str, Any] | None = None) -> Path:
    """Create ``root/name`` with a config.json (unless config is None) and extra files.

    ``files`` maps a relative path to a dict/list (written as JSON), a str (written as text)
    or an int (a dummy binary file of that many bytes).
    """
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    for rel, content in (files or {}).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            path.write_bytes(b"\0" * content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content))
    return folder


def only_model(root: Path) -> ModelInfo:
    catalog = scan_models(root)
    assert catalog.problems == []
    assert len(catalog.models) == 1
    return next(iter(catalog.models.values()))


def problem_for(catalog: Catalog, model_id: str) -> DiscoveryProblem:
    found = [p for p in catalog.problems if p.id == model_id]
    assert len(found) == 1, catalog.problems
    return found[0]


@pytest.mark.parametrize(
    ("name", "config", "files", "expected_type", "expected_template"),
    [
        ("chat-tokcfg", CAUSAL, {"tokenizer_config.json": TEMPLATE}, ModelType.CHAT, True),
        (
            "chat-list-tpl",
            CAUSAL,
            {"tokenizer_config.json": {"chat_template": [{"name": "d"}]}},
            ModelType.CHAT,
            True,
        ),
        ("chat-jinja", CAUSAL, {"chat_template.jinja": "{{ messages }}"}, ModelType.CHAT, True),
        ("chat-json", CAUSAL, {"chat_template.json": {"chat_template": "x"}}, ModelType.CHAT, True),
        ("base-lm", CAUSAL, {"tokenizer_config.json": {"chat_template": ""}}, ModelType.CHAT, False),
        ("gpt2-like", {"architectures": ["GPT2LMHeadModel"], "n_positions": 1024}, {}, ModelType.CHAT, False),
        (
            "st-embed",
            CAUSAL,
            {"modules.json": [], "tokenizer_config.json": TEMPLATE},
            ModelType.EMBEDDING,
            True,
        ),
        (
            "st-bert-cfg",
            {"architectures": ["Foo"]},
            {"sentence_bert_config.json": {}},
            ModelType.EMBEDDING,
            False,
        ),
        (
            "st-cfg",
            {"architectures": []},
            {"config_sentence_transformers.json": {}},
            ModelType.EMBEDDING,
            False,
        ),
        ("bert", BERT, {}, ModelType.EMBEDDING, False),
        ("xlmr", {"architectures": ["XLMRobertaModel"]}, {}, ModelType.EMBEDDING, False),
        ("t5-encoder", {"architectures": ["T5EncoderModel"]}, {}, ModelType.EMBEDDING, False),
        (
            "cross-encoder",
            {"architectures": ["BertForSequenceClassification"]},
            {},
            ModelType.RERANKER,
            False,
        ),
        ("Qwen3-Reranker-tiny", CAUSAL, {"tokenizer_config.json": TEMPLATE}, ModelType.RERANKER, True),
        ("my-RERANK", {"architectures": ["GPT2LMHeadModel"]}, {}, ModelType.RERANKER, False),
        ("flagged", {**CAUSAL, "is_reranker": True}, {"modules.json": []}, ModelType.RERANKER, False),
    ],
)
def test_type_detection(
    tmp_path: Path,
    name: str,
    config: dict[str, Any],
    files: dict[str, Any],
    expected_type: ModelType,
    expected_template: bool,
) -> None:
    make_model(tmp_path, name, config, files)
    info = only_model(tmp_path)
    assert info.id == name
    assert info.type is expected_type
    assert info.has_chat_template is expected_template


def test_an_unknown_architecture_is_a_problem_naming_the_override(tmp_path: Path) -> None:
    make_model(tmp_path, "t5", {"architectures": ["T5ForConditionalGeneration"]})
    catalog = scan_models(tmp_path)
    assert not catalog.models
    assert re.search(r"T5ForConditionalGeneration.*llm-interface\.json", problem_for(catalog, "t5").error)


def test_not_a_reranker_without_name_or_flag(tmp_path: Path) -> None:
    make_model(tmp_path, "plain", {**CAUSAL, "is_reranker": False})
    assert only_model(tmp_path).type is ModelType.CHAT


def test_metadata_and_size(tmp_path: Path) -> None:
    files: dict[str, Any] = {
        "model-00001.safetensors": 100,
        "model-00002.safetensors": 50,
        "sub/deeper/extra.bin": 7,
        "ckpt/a.pt": 3,
        "ckpt/b.PTH": 2,
        "q.gguf": 11,
        "tokenizer.json": 1000,
        "README.md": "hello",
        "vocab.txt": 500,
    }
    folder = make_model(tmp_path, "m", CAUSAL, files)
    info = only_model(tmp_path)
    assert info.size_bytes == 100 + 50 + 7 + 3 + 2 + 11
    assert info.dtype == "bfloat16"
    assert info.architecture == "Qwen3ForCausalLM"
    assert info.max_length == 4096
    assert info.path == str(folder.resolve())
    assert Path(info.path).is_absolute()
    assert info.options == {}


@pytest.mark.parametrize(
    ("config", "files", "dtype", "arch", "max_length"),
    [
        (
            {"architectures": ["BertModel", "Other"], "dtype": "float16", "max_position_embeddings": 512},
            {"sentence_bert_config.json": {"max_seq_length": 256}},
            "float16",
            "BertModel",
            256,
        ),
        (
            {"architectures": ["BertModel"], "max_position_embeddings": 512},
            {"sentence_bert_config.json": {"do_lower_case": True}},
            None,
            "BertModel",
            512,
        ),
        (
            {"architectures": ["GPT2LMHeadModel"], "n_positions": 1024, "torch_dtype": "float32"},
            {},
            "float32",
            "GPT2LMHeadModel",
            1024,
        ),
        ({"architectures": ["BertModel"], "torch_dtype": None}, {}, None, "BertModel", None),
        ({"architectures": "BertModel"}, {OVERRIDE_FILE: {"type": "embedding"}}, None, None, None),
    ],
)
def test_config_fields(
    tmp_path: Path,
    config: dict[str, Any],
    files: dict[str, Any],
    dtype: str | None,
    arch: str | None,
    max_length: int | None,
) -> None:
    make_model(tmp_path, "m", config, files)
    info = only_model(tmp_path)
    assert (info.dtype, info.architecture, info.max_length) == (dtype, arch, max_length)


def test_override_type_and_options(tmp_path: Path) -> None:
    options = {"pooling": "last", "nested": {"a": [1, 2]}, "normalize": True}
    make_model(
        tmp_path,
        "custom",
        {"architectures": ["Weird"]},
        {OVERRIDE_FILE: {"type": "embedding", "options": options}},
    )
    info = only_model(tmp_path)
    assert info.type is ModelType.EMBEDDING
    assert info.options == options


def test_override_wins_over_detection(tmp_path: Path) -> None:
    make_model(tmp_path, "bert-as-reranker", BERT, {OVERRIDE_FILE: {"type": "reranker"}})
    assert only_model(tmp_path).type is ModelType.RERANKER


def test_override_with_only_options_keeps_detection(tmp_path: Path) -> None:
    make_model(tmp_path, "m", CAUSAL, {OVERRIDE_FILE: {"options": {"max_batch": 4}}})
    info = only_model(tmp_path)
    assert info.type is ModelType.CHAT
    assert info.options == {"max_batch": 4}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "vision"}), "unknown type"),
        (json.dumps({"type": 3}), "unknown type"),
        (json.dumps(["chat"]), "JSON object"),
        (json.dumps({"type": "chat", "options": [1]}), "options"),
    ],
)
def test_bad_override_is_a_problem(tmp_path: Path, override: str, message: str) -> None:
    make_model(tmp_path, "bad", CAUSAL, {OVERRIDE_FILE: override})
    make_model(tmp_path, "good", CAUSAL)
    catalog = scan_models(tmp_path)
    assert list(catalog.models) == ["good"]
    assert message in problem_for(catalog, "bad").error


def test_broken_folders_are_problems_and_good_ones_are_found(tmp_path: Path) -> None:
    make_model(tmp_path, "no-config", None, {"model.safetensors": 10})
    make_model(tmp_path, "bad-json", None, {"config.json": "{oops"})
    make_model(tmp_path, "list-config", ["not", "an", "object"])
    make_model(tmp_path, "unknown-arch", {"architectures": ["T5ForConditionalGeneration"]})
    make_model(tmp_path, "no-arch", {})
    make_model(tmp_path, "config-is-dir", None, {"config.json/x": "y"})
    make_model(tmp_path, "bad-tokcfg", CAUSAL, {"tokenizer_config.json": "{"})
    make_model(tmp_path, "zeta-chat", CAUSAL)
    make_model(tmp_path, "alpha-embed", BERT)

    catalog = scan_models(tmp_path)
    assert list(catalog.models) == ["alpha-embed", "zeta-chat"]
    assert [p.id for p in catalog.problems] == sorted(p.id for p in catalog.problems)
    assert "config.json" in problem_for(catalog, "no-config").error
    assert "not valid JSON" in problem_for(catalog, "bad-json").error
    assert "JSON object" in problem_for(catalog, "list-config").error
    assert "cannot tell the model type" in problem_for(catalog, "unknown-arch").error
    assert "T5ForConditionalGeneration" in problem_for(catalog, "unknown-arch").error
    assert "cannot tell the model type" in problem_for(catalog, "no-arch").error
    assert problem_for(catalog, "config-is-dir").error
    assert "tokenizer_config.json" in problem_for(catalog, "bad-tokcfg").error
    assert problem_for(catalog, "no-config").path == str(tmp_path.resolve() / "no-config")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_unreadable_folder_is_a_problem(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "locked", CAUSAL)
    make_model(tmp_path, "open", CAUSAL)
    folder.chmod(0)
    try:
        catalog = scan_models(tmp_path)
    finally:
        folder.chmod(0o755)
    assert list(catalog.models) == ["open"]
    assert problem_for(catalog, "locked").error


def test_permission_error_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_model(tmp_path, "locked", CAUSAL)
    make_model(tmp_path, "open", CAUSAL)
    real_read_text = Path.read_text

    def fake_read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    catalog = scan_models(tmp_path)
    assert list(catalog.models) == ["open"]
    assert "Permission denied" in problem_for(catalog, "locked").error


def test_missing_models_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    catalog = scan_models(missing)
    assert catalog.models == {}
    assert catalog.problems == [DiscoveryProblem("", str(missing), "models folder does not exist")]


def test_models_dir_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    catalog = scan_models(str(file))
    assert catalog.models == {}
    assert len(catalog.problems) == 1


def test_hidden_folders_and_plain_files_are_skipped(tmp_path: Path) -> None:
    make_model(tmp_path, ".cache", CAUSAL)
    make_model(tmp_path, ".broken", None)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "config.json").write_text(json.dumps(CAUSAL))
    make_model(tmp_path, "real", CAUSAL)
    catalog = scan_models(tmp_path)
    assert list(catalog.models) == ["real"]
    assert catalog.problems == []


def test_unsafe_folder_names_are_problems(tmp_path: Path) -> None:
    make_model(tmp_path, "a%2fb", CAUSAL)
    make_model(tmp_path, "back\\slash", CAUSAL)
    make_model(tmp_path, "fine", CAUSAL)
    catalog = scan_models(tmp_path)
    assert list(catalog.models) == ["fine"]
    assert {p.id for p in catalog.problems} == {"a%2fb", "back\\slash"}
    assert all(is_safe_model_id(i) for i in catalog.models)


def test_symlinks(tmp_path: Path) -> None:
    models = tmp_path / "models"
    outside = make_model(tmp_path, "outside", CAUSAL)
    inside = make_model(models, "inside", BERT, {"w.safetensors": 5})
    (models / "escape").symlink_to(outside, target_is_directory=True)
    (models / "alias").symlink_to(Path("inside"), target_is_directory=True)
    (models / "self").symlink_to(models, target_is_directory=True)
    (models / "dangling").symlink_to(tmp_path / "gone")
    (models / "file-link").symlink_to(outside / "config.json")

    catalog = scan_models(models)
    assert list(catalog.models) == ["alias", "inside"]
    alias = catalog.models["alias"]
    assert alias.path == str(inside.resolve())
    assert alias.size_bytes == 5
    assert alias.type is ModelType.EMBEDDING
    assert problem_for(catalog, "escape").error == "resolves outside the models folder"
    assert problem_for(catalog, "self").error == "resolves outside the models folder"
    assert "broken" in problem_for(catalog, "dangling").error
    assert "file-link" not in {p.id for p in catalog.problems}


def test_symlinked_models_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    make_model(real, "m", CAUSAL)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    info = only_model(link)
    assert info.path == str((real / "m").resolve())


def test_round_trip(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        "m",
        CAUSAL,
        {"tokenizer_config.json": TEMPLATE, "w.safetensors": 9, OVERRIDE_FILE: {"options": {"k": [1, {"x": None}]}}},
    )
    catalog = scan_models(tmp_path)
    info = catalog.models["m"]
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["type"] == "chat"
    assert ModelInfo.from_dict(json.loads(json.dumps(data))) == info
    data["options"]["k"].append(2)
    assert info.options == {"k": [1, {"x": None}]}
    assert json.loads(json.dumps(catalog.to_dict()))["models"][0]["id"] == "m"


def test_from_dict_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        ModelInfo.from_dict({"id": "x"})
    with pytest.raises(ValueError):
        ModelInfo.from_dict(
            {"id": "x", "type": "vision", "path": "/p", "size_bytes": 0, "has_chat_template": False}
        )


def test_problem_to_dict() -> None:
    problem = DiscoveryProblem("m", "/models/m", "no config.json")
    assert problem.to_dict() == {"id": "m", "path": "/models/m", "error": "no config.json"}


@pytest.mark.parametrize(
    ("model_id", "safe"),
    [
        ("ok-model", True),
        ("Qwen3-0.6B", True),
        ("model_v2.1", True),
        ("a" * 255, True),
        ("a" * 256, False),
        ("../etc", False),
        ("/etc", False),
        ("..%2fetc", False),
        ("%2e%2e", False),
        ("a\\b", False),
        ("a/b", False),
        (".", False),
        ("..", False),
        (".hidden", False),
        ("", False),
        ("nul\x00byte", False),
    ],
)
def test_is_safe_model_id(model_id: str, safe: bool) -> None:
    assert is_safe_model_id(model_id) is safe


def test_remote_code_and_pickle_only_folders_are_refused_unless_allowed(tmp_path: Path) -> None:
    """Drill 22: a folder that would execute its own code is not served unless explicitly allowed."""
    make_model(tmp_path, "remote", {**CAUSAL, "auto_map": {"AutoModel": "modeling_x.XModel"}}, {"w.safetensors": 4})
    make_model(tmp_path, "pickled", CAUSAL, {"pytorch_model.bin": 4})
    make_model(tmp_path, "both", CAUSAL, {"pytorch_model.bin": 4, "model.safetensors": 4})
    default = scan_models(tmp_path)
    assert set(default.models) == {"both"}
    reasons = {p.id: p.error for p in default.problems}
    assert "LLM_TRUST_REMOTE_CODE" in reasons["remote"] and "LLM_ALLOW_PICKLE_WEIGHTS" in reasons["pickled"]
    allowed = scan_models(tmp_path, LoadPolicy(trust_remote_code=True, allow_pickle_weights=True))
    assert set(allowed.models) == {"remote", "pickled", "both"}
