"""Quantized checkpoints and the seed's card: detected from the folder, planned in their own precision, given
vLLM arguments that vLLM's own engine config accepts (built here on the CPU build), refused by the
transformers engines, and `llm-interface plan --gpu-gb 8` on a folder shaped like the seed's example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.discovery import scan_models
from common.errors import EngineFailure
from common.protocol import ModelType
from common.settings import Settings
from tests.model_factory import build_seed_shaped_dir, make_quantized_qwen25_7b
from tests.stack import ROOT
from worker.engines.registry import make_engine
from worker.policy.planner import GIB, GpuInfo, PlannerParams, plan_placements


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seed_shaped_dir(tmp_path_factory.mktemp("seed"))


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_a_quantized_folder_is_detected_with_its_shape(tmp_path: Path, method: str) -> None:
    make_quantized_qwen25_7b(tmp_path / "qwen-7b", method)
    info = scan_models(tmp_path).models["qwen-7b"]
    assert info.type is ModelType.CHAT and info.quantization == method
    assert info.shape is not None and (info.shape.layers, info.shape.kv_heads, info.shape.head_dim) == (28, 4, 128)
    assert info.size_bytes == pytest.approx(5.2 * GIB, rel=1e-3)  # the bytes on disk (sparse: none really used)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_vllm_builds_its_engine_config_from_our_arguments(seed_dir: Path, tmp_path: Path, method: str) -> None:
    """The seed's card, its two small models beside: the chat model is offloaded, and vLLM's own config
    builder (the CPU build, no weights read) takes what we derived: quantization, a 16-bit dtype even with
    LLM_VLLM_DTYPE=float32, the fitted context, the fixed KV cache, its own utilization and the offload."""
    from worker.engines.vllm_chat import engine_args

    for name in ("Qwen3-Embedding-0.6B", "Qwen3-Reranker-0.6B"):
        (tmp_path / name).symlink_to(seed_dir / name)
    make_quantized_qwen25_7b(tmp_path / "qwen-7b", method)
    settings = Settings(models_dir=tmp_path, vllm_dtype="float32")
    catalog = scan_models(tmp_path)
    plan = plan_placements(catalog.models.values(), GpuInfo.simulated(8), PlannerParams.from_settings(settings))
    chat = plan["qwen-7b"]
    assert chat.offloaded and chat.error is None
    config = engine_args(catalog.models["qwen-7b"], settings, chat).create_engine_config()
    assert method in str(config.model_config.quantization)
    assert str(config.model_config.dtype) == "torch.float16"
    assert config.model_config.max_model_len == chat.max_model_len == 16384
    assert config.cache_config.kv_cache_memory_bytes == chat.kv_cache_bytes
    assert config.cache_config.gpu_memory_utilization == chat.engine_args["gpu_memory_utilization"]
    assert config.offload_config.uva.cpu_offload_gb == pytest.approx(chat.cpu_offload_bytes / GIB, abs=1e-3)
    assert config.scheduler_config.max_num_seqs == chat.engine_args["max_num_seqs"]


def test_the_transformers_engines_refuse_quantized_checkpoints(tmp_path: Path) -> None:
    make_quantized_qwen25_7b(tmp_path / "qwen-7b", "awq")
    (tmp_path / "qwen-7b" / "llm-interface.json").write_text(json.dumps({"options": {"chat_engine": "transformers"}}))
    info = scan_models(tmp_path).models["qwen-7b"]
    with pytest.raises(EngineFailure) as caught:
        make_engine(info, Settings(models_dir=tmp_path))
    assert caught.value.code == "model_load_failed" and "awq" in caught.value.message


def test_plan_on_the_seed_card_keeps_all_three_resident(seed_dir: Path) -> None:
    env = {"LLM_MODELS_DIR": str(seed_dir), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "cli", "plan", "--gpu-gb", "8"]
    rows = json.loads(subprocess.run([*command, "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout)
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {"Qwen2.5-7B-Instruct-AWQ", "Qwen3-Embedding-0.6B", "Qwen3-Reranker-0.6B"}
    for row in rows:
        for key in ("id", "type", "device", "gpu_bytes", "cpu_offload_bytes", "kv_cache_bytes", "max_model_len",
                    "engine_args"):
            assert key in row
        assert row["device"] == "cuda" and row["start_check"] == "ok" and row["error"] is None
    chat = by_id["Qwen2.5-7B-Instruct-AWQ"]
    assert chat["cpu_offload_bytes"] > 0 and chat["quantization"] == "awq"  # partly offloaded
    assert by_id["Qwen3-Embedding-0.6B"]["cpu_offload_bytes"] == by_id["Qwen3-Reranker-0.6B"]["cpu_offload_bytes"] == 0
    for key in ("gpu_memory_utilization", "kv_cache_memory_bytes", "max_model_len", "cpu_offload_gb"):
        assert chat["engine_args"][key]
    assert sum(row["gpu_bytes"] for row in rows) <= 8 * GIB
    table = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "all resident together: yes" in table and "Qwen2.5-7B-Instruct-AWQ" in table
