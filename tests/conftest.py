from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.model_factory import build_models_dir
from tests.stack import RedisServer, Stack, tiktoken_cache_dir

if (_TIKTOKEN_CACHE := tiktoken_cache_dir()) is not None:  # cl100k_base offline, here and in every stack's API
    os.environ["TIKTOKEN_CACHE_DIR"] = _TIKTOKEN_CACHE


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_models_dir(root)
    # The same model as sentence-transformers 6 saves it when the tokenizer has a chat template:
    # the "message" modality, which renders every text as a chat user turn before encoding.
    st6 = root / "tiny-qwen3-embedding-st6"
    shutil.copytree(root / "tiny-qwen3-embedding", st6)
    modality = {"method": "forward", "method_output_name": "last_hidden_state"}
    (st6 / "sentence_bert_config.json").write_text(json.dumps({
        "transformer_task": "feature-extraction", "module_output_name": "token_embeddings",
        "modality_config": {"text": modality, "message": {**modality, "format": "flat"}},
        "max_seq_length": 256, "do_lower_case": False}))
    # A chat model served by the transformers fallback engine (per-folder option).
    hf_chat = root / "tiny-qwen2-chat-hf"
    shutil.copytree(root / "tiny-qwen2-chat", hf_chat)
    (hf_chat / "llm-interface.json").write_text(json.dumps({"options": {"chat_engine": "transformers"}}))
    # The trained tool-calling model on the transformers engine too (vLLM's parsers and grammars there).
    hf_tools = root / "tiny-qwen25-tools-hf"
    shutil.copytree(root / "tiny-qwen25-tools", hf_tools)
    (hf_tools / "llm-interface.json").write_text(json.dumps({"options": {"chat_engine": "transformers"}}))
    return root


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, models_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole service (real API process, real worker process, real Redis) on the test models."""
    s = Stack(redis_server.url, models_dir, tmp_path_factory.mktemp("logs"))
    s.start(expect_models=len([p for p in models_dir.iterdir() if p.is_dir()]))
    yield s
    s.stop()
