"""Settings validation, and reading sentence-transformers pooling configs (both formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from common.errors import InvalidRequest
from common.settings import Settings
from worker.engines.pooling import pool, read_spec


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLM_PORT", "LLM_REDIS_URL", "LLM_MODEL_CACHE_SIZE"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings()
    assert settings.port == 15530
    assert settings.redis_url is None
    assert settings.model_cache_size == 1


@pytest.mark.parametrize(("var", "value"), [
    ("LLM_PORT", "0"), ("LLM_PORT", "abc"), ("LLM_GPU_MEMORY_UTILIZATION", "1.5"),
    ("LLM_MODEL_CACHE_SIZE", "0"), ("LLM_VLLM_DTYPE", "int3"), ("LLM_CHAT_ENGINE", "llamacpp"),
    ("LLM_ENABLE_GPU_MEMORY_OFFLOAD", "maybe"),
])
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_AVAILABLE_GPU_MEMORY_GB", "7.5")
    monkeypatch.setenv("LLM_ENABLE_GPU_MEMORY_OFFLOAD", "false")
    settings = Settings()
    assert settings.available_gpu_memory_gb == 7.5
    assert settings.enable_gpu_memory_offload is False


def _st_folder(tmp_path: Path, pooling: dict[str, object], extra: list[dict[str, str]] | None = None) -> Path:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               *(extra or [])]
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return tmp_path


def test_legacy_pooling_keys(tmp_path: Path) -> None:
    folder = _st_folder(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
                        [{"idx": 2, "name": "2", "path": "2_Normalize",
                          "type": "sentence_transformers.models.Normalize"}])
    spec = read_spec(folder, is_decoder=False)
    assert (spec.modes, spec.normalize, spec.max_seq_length) == (("cls",), True, 128)


def test_new_pooling_key_and_no_normalize(tmp_path: Path) -> None:
    spec = read_spec(_st_folder(tmp_path, {"pooling_mode": "lasttoken"}), is_decoder=True)
    assert (spec.modes, spec.normalize) == (("lasttoken",), False)


def test_unsupported_module_is_refused(tmp_path: Path) -> None:
    folder = _st_folder(tmp_path, {"pooling_mode": "mean"},
                        [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    with pytest.raises(InvalidRequest):
        read_spec(folder, is_decoder=False)


def test_defaults_without_sentence_transformers_files(tmp_path: Path) -> None:
    assert read_spec(tmp_path, is_decoder=False).modes == ("mean",)
    assert read_spec(tmp_path, is_decoder=True).modes == ("lasttoken",)


def test_pool_modes_on_right_padded_batch() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, ("cls",)).flatten().tolist() == [1.0, 2.0]
    assert pool(hidden, mask, ("mean",)).flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, mask, ("max",)).flatten().tolist() == [3.0, 6.0]
    assert pool(hidden, mask, ("lasttoken",)).flatten().tolist() == [3.0, 6.0]
    assert pool(hidden, mask, ("cls", "lasttoken")).tolist() == [[1.0, 3.0], [2.0, 6.0]]
