"""First run on a machine with no models: the packaged all-MiniLM-L6-v2 is served as `all-minilm-l6-v2`
(unless LLM_DEFAULT_MODELS=false), with the same vectors as sentence-transformers; a folder with models of its own
serves only those."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from common.discovery import DEFAULT_MODEL, scan_models
from tests.stack import RedisServer, Stack


@pytest.fixture(scope="module")
def empty_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("first-run")
    server = RedisServer(root / "redis")
    server.start()
    stack = Stack(server.url, root / "no-such-folder", root / "logs")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        server.stop()


def test_an_empty_machine_serves_the_packaged_model(empty_stack: Stack) -> None:
    from sentence_transformers import SentenceTransformer

    ids = [m["id"] for m in httpx.get(f"{empty_stack.base_url}/v1/models", timeout=30).json()["data"]]
    assert ids == [DEFAULT_MODEL]
    answer = httpx.post(f"{empty_stack.base_url}/v1/embeddings", timeout=120,
                        json={"model": DEFAULT_MODEL, "input": ["hello", "world"]}).json()
    got = np.array([d["embedding"] for d in answer["data"]])
    folder = scan_models(Path("/nonexistent"), defaults=True).models[DEFAULT_MODEL].path
    expected = SentenceTransformer(str(folder), device="cpu").encode(["hello", "world"], normalize_embeddings=True)
    assert np.allclose(got, expected, atol=1e-5)


def test_its_load_is_logged(empty_stack: Stack) -> None:
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in empty_stack.logdir.glob("worker*"))
    assert f"loading {DEFAULT_MODEL} (embedding" in text and f"loaded {DEFAULT_MODEL} in" in text
    assert f"waits for {DEFAULT_MODEL}" in text


def test_the_default_can_be_turned_off_and_a_folder_of_models_replaces_it(tmp_path: Path) -> None:
    assert scan_models(tmp_path, defaults=False).models == {}
    assert list(scan_models(tmp_path, defaults=True).models) == [DEFAULT_MODEL]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text('{"architectures": ["BertModel"]}', encoding="utf-8")
    assert list(scan_models(tmp_path, defaults=True).models) == ["mine"]
