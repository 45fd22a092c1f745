"""Cohere's embed API end to end: the Cohere SDK (v2 `ClientV2`, v1 `Client`) and langchain-cohere against the
running stack, vectors equal to /v1/embeddings', the quantised types as api/schemas/cohere_embed.py defines them
(computed here from the float vectors), and errors in Cohere's envelope."""

from __future__ import annotations

import base64
import json
from typing import Any

import cohere
import httpx
import numpy as np
import pytest
from cohere.errors import BadRequestError, NotFoundError, UnprocessableEntityError
from langchain_cohere import CohereEmbeddings

from tests.stack import Stack

MINILM = "all-minilm-l6-v2"
TEXTS = ["The cat sits on the mat.", "Quarterly earnings beat analyst expectations.",
         "Ünïcödé text with emoji 🚀 and CJK 漢字"]
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=120)


@pytest.fixture(scope="module")
def reference(http: httpx.Client) -> dict[str, Any]:
    """The same texts through /v1/embeddings: vectors and token usage."""
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": TEXTS, "encoding_format": "float"})
    assert response.status_code == 200, response.text
    body = response.json()
    return {"vectors": np.array([d["embedding"] for d in body["data"]]), "tokens": body["usage"]["prompt_tokens"]}


@pytest.fixture(scope="module")
def v2(stack: Stack) -> cohere.ClientV2:
    return cohere.ClientV2(api_key="unused", base_url=stack.base_url, timeout=120)


@pytest.fixture(scope="module")
def v1(stack: Stack) -> cohere.Client:
    return cohere.Client(api_key="unused", base_url=stack.base_url, timeout=120)


def int8(vector: np.ndarray) -> np.ndarray:
    return np.round(vector * (127.0 / np.abs(vector).max())).astype(int)


def ubinary(vector: np.ndarray) -> np.ndarray:
    return np.packbits(vector > 0).astype(int)


def assert_quantised(embeddings: Any, floats: np.ndarray) -> None:
    """int8, uint8, binary, ubinary and base64 as defined, from the float vectors of the same answer."""
    for i, vector in enumerate(floats):
        assert embeddings.int8[i] == int8(vector).tolist()
        assert embeddings.uint8[i] == (int8(vector) + 128).tolist()
        assert embeddings.ubinary[i] == ubinary(vector).tolist()
        assert embeddings.binary[i] == (ubinary(vector) - 128).tolist()
        assert np.frombuffer(base64.b64decode(embeddings.base64[i]), dtype="<f4").tolist() == vector.tolist()
    assert all(-127 <= q <= 127 for row in embeddings.int8 for q in row)
    assert all(0 <= q <= 255 for row in embeddings.uint8 + embeddings.ubinary for q in row)
    assert all(-128 <= q <= 127 for row in embeddings.binary for q in row)
    assert len(embeddings.binary[0]) == floats.shape[1] // 8


def test_v2_sdk_floats_equal_openai_route(v2: cohere.ClientV2, reference: dict[str, Any]) -> None:
    response = v2.embed(model=MINILM, texts=TEXTS, input_type="search_document", embedding_types=["float"])
    got = np.array(response.embeddings.float_)
    assert got.shape == reference["vectors"].shape
    assert np.allclose(got, reference["vectors"], atol=1e-5)
    assert response.texts == TEXTS
    assert response.response_type == "embeddings_by_type"
    assert response.meta is not None and response.meta.billed_units is not None
    assert response.meta.billed_units.input_tokens == reference["tokens"]
    assert response.meta.api_version is not None and response.meta.api_version.version == "2"
    assert response.id


def test_v2_sdk_every_embedding_type(v2: cohere.ClientV2, reference: dict[str, Any]) -> None:
    response = v2.embed(model=MINILM, texts=TEXTS, input_type="search_query", embedding_types=ALL_TYPES)
    floats = np.array(response.embeddings.float_)
    assert np.allclose(floats, reference["vectors"], atol=1e-5)
    assert_quantised(response.embeddings, floats)


def test_v2_output_dimension_is_matryoshka(v2: cohere.ClientV2, http: httpx.Client) -> None:
    response = v2.embed(model=MINILM, texts=TEXTS[:2], input_type="clustering", output_dimension=64,
                        embedding_types=["float", "ubinary"])
    body = http.post("/v1/embeddings", json={"model": MINILM, "input": TEXTS[:2], "dimensions": 64,
                                             "encoding_format": "float"}).json()
    expected = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(np.array(response.embeddings.float_), expected, atol=1e-5)
    assert len(response.embeddings.ubinary[0]) == 8


def test_v1_sdk_without_types_answers_embeddings_floats(v1: cohere.Client, reference: dict[str, Any]) -> None:
    response = v1.embed(model=MINILM, texts=TEXTS, input_type="classification")
    assert response.response_type == "embeddings_floats"
    assert np.allclose(np.array(response.embeddings), reference["vectors"], atol=1e-5)
    assert response.texts == TEXTS
    assert response.meta is not None and response.meta.billed_units is not None
    assert response.meta.billed_units.input_tokens == reference["tokens"]


def test_v1_sdk_with_types_answers_embeddings_by_type(v1: cohere.Client, reference: dict[str, Any]) -> None:
    response = v1.embed(model=MINILM, texts=TEXTS, embedding_types=ALL_TYPES)
    assert response.response_type == "embeddings_by_type"
    floats = np.array(response.embeddings.float_)
    assert np.allclose(floats, reference["vectors"], atol=1e-5)
    assert_quantised(response.embeddings, floats)


def test_langchain_cohere_embeddings(stack: Stack, reference: dict[str, Any]) -> None:
    embedder = CohereEmbeddings(model=MINILM, base_url=stack.base_url, cohere_api_key="unused")
    documents = np.array(embedder.embed_documents(TEXTS))
    assert np.allclose(documents, reference["vectors"], atol=1e-5)
    query = np.array(embedder.embed_query(TEXTS[0]))
    assert np.allclose(query, reference["vectors"][0], atol=1e-5)
    int8_embedder = CohereEmbeddings(model=MINILM, base_url=stack.base_url, cohere_api_key="unused",
                                     embedding_types=["int8"])
    assert int8_embedder.embed_documents(TEXTS[:1]) == [[float(q) for q in int8(reference["vectors"][0])]]


def test_sdk_errors_are_raised_as_cohere_errors(v2: cohere.ClientV2, v1: cohere.Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        v2.embed(model="no-such-model", texts=["hi"], input_type="search_query")
    assert "no-such-model" in missing.value.body["message"]
    with pytest.raises(BadRequestError) as empty:
        v2.embed(model=MINILM, texts=[], input_type="search_query")
    assert set(empty.value.body) == {"message"}
    with pytest.raises(UnprocessableEntityError):
        v1.embed(model=MINILM, texts=["hi"], embedding_types=["hex"])


def assert_cohere_envelope(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert set(body) == {"message"}, body  # Cohere's envelope, not OpenAI's {"error": {...}}
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
@pytest.mark.parametrize(("body", "status"), [
    ({"model": MINILM, "texts": "not a list"}, 422),
    ({"model": MINILM, "texts": ["ok", 3]}, 422),
    ({"model": MINILM, "texts": ["hi"], "embedding_types": ["hex"]}, 422),
    ({"model": MINILM, "texts": ["hi"], "input_type": "poetry"}, 422),
    ({"model": MINILM, "texts": ["hi"], "truncate": "MIDDLE"}, 422),
    ({"model": MINILM, "texts": ["hi"], "output_dimension": 0}, 422),
    ({"model": MINILM, "texts": []}, 400),
    ({"model": MINILM, "texts": ["ok", ""]}, 400),
    ({"model": MINILM}, 400),
    ({"model": MINILM, "images": ["data:image/png;base64,AAAA"]}, 400),
    ({"model": MINILM, "texts": ["hi"], "truncate": "START"}, 400),
    ({"model": MINILM, "texts": ["hi"], "max_tokens": 8}, 400),
    ({"model": MINILM, "texts": ["a\ud800b"]}, 400),
    ({"model": MINILM, "texts": ["hi"], "output_dimension": 100000}, 400),
    ({"model": "tiny-qwen3-chat", "texts": ["hi"]}, 400),
    ({"texts": ["hi"]}, 400),  # several embedding models are served: 'model' is needed
    ({"model": "no-such-model", "texts": ["hi"]}, 404),
])
def test_bad_bodies_answer_cohere_envelope(http: httpx.Client, path: str, body: dict[str, Any], status: int) -> None:
    raw = json.dumps(body)  # ASCII-escaped: a lone surrogate travels as JSON spells it, backslash-u-d800
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert_cohere_envelope(response)


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed"])
@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b'"text"'])
def test_malformed_json_answers_cohere_envelope(http: httpx.Client, path: str, raw: bytes) -> None:
    assert_cohere_envelope(http.post(path, content=raw, headers={"content-type": "application/json"}))


def test_truncate_end_and_max_tokens_at_the_window_are_served(http: httpx.Client) -> None:
    response = http.post("/v2/embed", json={"model": MINILM, "texts": ["hi"], "truncate": "END", "max_tokens": 256,
                                            "embedding_types": None, "input_type": None, "priority": 0})
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]["float"][0]) == 384


def test_openai_routes_keep_the_openai_envelope(http: httpx.Client) -> None:
    error = http.post("/v1/embeddings", json={"model": MINILM, "input": []}).json()["error"]
    assert error["code"] == "empty_input"
