"""Token-id embedding inputs mean what OpenAI means: cl100k_base ids, decoded in the API and embedded as their text
(LLM_EMBEDDING_TOKEN_IDS=cl100k, the default), so LangChain's OpenAIEmbeddings with its defaults (it tokenises
with tiktoken and sends ids) gets sentence-transformers' vectors. LLM_EMBEDDING_TOKEN_IDS=model keeps vLLM's
reading; without the cl100k file a token-id input is a 400 saying so. The extra APIs here share the session
stack's Redis and worker."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings
from sentence_transformers import SentenceTransformer

from api import token_ids
from api.batches.lines import Embeddings, Line
from common.errors import InvalidRequest
from common.settings import Settings
from tests.stack import RedisServer, Stack, free_port, wait_until

MINILM = "all-minilm-l6-v2"
TEXTS = ["The cat sits on the mat.", "How do I bake sourdough bread at home?",
         "Ünïcödé text with emoji 🚀 and CJK 漢字"]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))


@pytest.fixture(scope="module")
def minilm(models_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(models_dir / MINILM), device="cpu")


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base")  # offline: conftest points TIKTOKEN_CACHE_DIR at a packaged copy


def embed(base_url: str, payload: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/embeddings", json={"model": MINILM, "input": payload,
                                                          "encoding_format": "float"}, timeout=120)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def another_api(stack: Stack, redis_server: RedisServer, tmp: Path, **env: str) -> Iterator[Stack]:
    """An API process of its own settings, in front of the session stack's Redis and worker."""
    api = Stack(redis_server.url, stack.models_dir, tmp / "logs", env_extra=env, port=free_port())
    api.start_api()
    try:
        wait_until(lambda: api.health().get("models", 0) >= 1, 60, "the extra API")
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def model_vocab_api(stack: Stack, redis_server: RedisServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from another_api(stack, redis_server, tmp_path_factory.mktemp("ids-model"), LLM_EMBEDDING_TOKEN_IDS="model")


@pytest.fixture(scope="module")
def no_cl100k_api(stack: Stack, redis_server: RedisServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    empty = tmp_path_factory.mktemp("empty-tiktoken-cache")
    yield from another_api(stack, redis_server, tmp_path_factory.mktemp("ids-none"), TIKTOKEN_CACHE_DIR=str(empty))


def test_cl100k_ids_embed_as_their_text(stack: Stack, cl100k: tiktoken.Encoding, minilm: SentenceTransformer) -> None:
    by_text = embed(stack.base_url, TEXTS)
    by_ids = embed(stack.base_url, [cl100k.encode(t) for t in TEXTS])
    assert np.allclose(vectors(by_ids), vectors(by_text), atol=1e-5)
    single = vectors(embed(stack.base_url, cl100k.encode(TEXTS[0])))
    assert single.shape == (1, 384) and np.allclose(single[0], vectors(by_text)[0], atol=1e-5)
    # usage counts the model's own tokens of the decoded text, not the cl100k ids
    expected = sum(len(minilm.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert by_ids.json()["usage"]["prompt_tokens"] == expected


def test_langchain_openai_embeddings_defaults_match_sentence_transformers(
        stack: Stack, minilm: SentenceTransformer) -> None:
    embedder = OpenAIEmbeddings(model=MINILM, base_url=f"{stack.base_url}/v1", api_key="unused")
    assert embedder.check_embedding_ctx_length and embedder.tiktoken_enabled  # the defaults: it sends token ids
    documents = np.array(embedder.embed_documents(TEXTS))
    assert np.all(cosine(documents, minilm.encode(TEXTS)) >= 0.999)
    query = np.array(embedder.embed_query(TEXTS[1]))
    assert cosine(query, minilm.encode([TEXTS[1]])[0]) >= 0.999


@pytest.mark.parametrize("payload", [[100256], [[9906], [100261, 9906]], [10**6], [[1, 2, 2**31 - 1]]])
def test_ids_cl100k_lacks_are_invalid_token_id(stack: Stack, payload: list[Any]) -> None:
    response = embed(stack.base_url, payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_token_id" and error["param"] == "input"
    assert "cl100k_base" in error["message"]


def test_model_setting_keeps_ids_of_the_model_vocabulary(model_vocab_api: Stack, minilm: SentenceTransformer) -> None:
    ids = [minilm.tokenizer(t)["input_ids"] for t in TEXTS]
    assert np.allclose(vectors(embed(model_vocab_api.base_url, ids)),
                       vectors(embed(model_vocab_api.base_url, TEXTS)), atol=1e-5)
    response = embed(model_vocab_api.base_url, [[101, 10**6, 102]])  # past the 30522-token vocabulary
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_token_id"
    assert "vocabulary is [0, 30522)" in response.json()["error"]["message"]


def test_without_the_cl100k_file_token_ids_are_a_clear_400(no_cl100k_api: Stack, cl100k: tiktoken.Encoding) -> None:
    response = embed(no_cl100k_api.base_url, [cl100k.encode(TEXTS[0])])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "token_ids_unavailable" and error["param"] == "input"
    assert "cl100k_base" in error["message"] and "TIKTOKEN_CACHE_DIR" in error["message"]
    assert vectors(embed(no_cl100k_api.base_url, TEXTS)).shape == (3, 384)  # text is served as ever


def test_cl100k_path_follows_tiktoken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name = hashlib.sha1(token_ids.CL100K_URL.encode()).hexdigest()
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    assert token_ids.cl100k_path() == tmp_path / "gym" / name
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert token_ids.cl100k_path() == tmp_path / name
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's "caching off": nothing to read offline
    with pytest.raises(InvalidRequest) as off:
        token_ids.cl100k_texts([[1]], "input")
    assert off.value.code == "token_ids_unavailable"


def test_a_file_that_is_not_cl100k_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / hashlib.sha1(token_ids.CL100K_URL.encode()).hexdigest()).write_bytes(b"aGk= 0\n")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(InvalidRequest) as wrong:
        token_ids.cl100k_texts([[0]], "input")
    assert wrong.value.code == "token_ids_unavailable" and "is not cl100k_base" in wrong.value.message


def test_batch_lines_read_token_ids_as_the_route_does(cl100k: tiktoken.Encoding) -> None:
    lines = [Line(1, 0, "r0", {"model": MINILM, "input": [cl100k.encode(TEXTS[0])]}),
             Line(2, 0, "r1", {"model": MINILM, "input": [[100256]]})]
    jobs, errors = Embeddings(Settings(), 0).plan(lines)
    assert [p.job.payload["input"] for p in jobs] == [[TEXTS[0]]]
    assert [e.line for e in errors] == [2] and b"invalid_token_id" in errors[0].data
    (job,), _ = Embeddings(Settings(embedding_token_ids="model"), 0).plan(lines[:1])
    assert job.job.payload["input"] == [cl100k.encode(TEXTS[0])]
