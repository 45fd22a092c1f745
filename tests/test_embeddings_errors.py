"""Bad input on /v1/embeddings: the documented status and the OpenAI error envelope, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.stack import Stack

MINILM = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=60)


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model", "input": "hi"}, 404, "model_not_found"),
        ({"model": "tiny-qwen3-chat", "input": "hi"}, 400, "wrong_model_type"),
        ({"model": "tiny-bert-reranker", "input": "hi"}, 400, "wrong_model_type"),
        ({"model": MINILM, "input": []}, 400, "empty_input"),
        ({"model": MINILM, "input": ""}, 400, "empty_input"),
        ({"model": MINILM, "input": ["ok", ""]}, 400, "empty_input"),
        ({"model": MINILM, "input": [[1, 2], []]}, 400, "empty_input"),
        ({"model": MINILM, "input": ["x"] * 2049}, 400, "too_many_inputs"),
        ({"model": MINILM, "input": [10**9]}, 400, None),
        ({"model": MINILM, "input": "hi", "dimensions": 100000}, 400, None),
        ({"model": MINILM, "input": 123}, 422, "validation_error"),
        ({"model": MINILM, "input": [1.5, 2]}, 422, "validation_error"),
        ({"model": MINILM, "input": ["a", 1]}, 422, "validation_error"),
        ({"model": MINILM, "input": [["a"]]}, 422, "validation_error"),
        ({"model": MINILM, "input": None}, 422, "validation_error"),
        ({"input": "hi"}, 422, "validation_error"),
        ({"model": "", "input": "hi"}, 422, "validation_error"),
        ({"model": 5, "input": "hi"}, 422, "validation_error"),
        ({"model": MINILM, "input": "hi", "encoding_format": "hex"}, 422, "validation_error"),
        ({"model": MINILM, "input": "hi", "dimensions": 0}, 422, "validation_error"),
        ({"model": MINILM, "input": "hi", "dimensions": "64"}, 422, "validation_error"),
    ],
)
def test_bad_input(http: httpx.Client, body: dict[str, Any], status: int, code: str | None) -> None:
    assert_envelope(http.post("/v1/embeddings", json=body), status, code)


def test_unknown_model_names_the_param(http: httpx.Client) -> None:
    error = assert_envelope(http.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    assert error["param"] == "model"
    assert "nope" in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b'"text"'])
def test_malformed_body_is_422(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert_envelope(response, 422)


def test_one_megabyte_string_is_truncated_to_the_model_window(http: httpx.Client) -> None:
    """Documented: over-long inputs are truncated to the model's max length (LLM_EMBEDDING_TRUNCATE)."""
    text = "lorem ipsum dolor sit amet " * 40_000  # about 1 MB
    assert len(text) > 1_000_000
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": text})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["prompt_tokens"] == 256  # all-MiniLM-L6-v2's max_seq_length
    assert len(body["data"][0]["embedding"]) == 384


def test_unknown_route_and_method_use_the_envelope(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/nothing-here"), 404)
    assert_envelope(http.get("/v1/embeddings"), 405)
