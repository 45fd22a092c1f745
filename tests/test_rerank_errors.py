"""Bad input on the rerank routes: the documented status and the OpenAI error envelope, never a 500 or a hang."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.directory import ModelDirectory, Snapshot
from api.limits import BodyLimit
from api.schemas.rerank import RerankRequest
from common.discovery import ModelInfo
from common.errors import InvalidRequest
from common.protocol import ModelType
from tests.stack import Stack
from tests.test_embeddings_errors import assert_envelope

BERT = "tiny-bert-reranker"
QWEN = "tiny-qwen3-reranker"
OK = {"model": BERT, "query": "q", "documents": ["a", "b"]}


@pytest.fixture(scope="module")
def http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=120)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({**OK, "documents": []}, 400, "empty_input"),
        ({**OK, "query": ""}, 400, "empty_input"),
        ({"model": BERT, "query": "q", "texts": []}, 400, "empty_input"),
        ({**OK, "documents": ["d"] * 1001}, 400, "too_many_documents"),
        ({**OK, "model": "no-such-model"}, 404, "model_not_found"),
        ({**OK, "model": "all-minilm-l6-v2"}, 400, "wrong_model_type"),
        ({**OK, "model": "tiny-qwen3-embedding"}, 400, "wrong_model_type"),
        ({**OK, "model": "tiny-qwen3-chat"}, 400, "wrong_model_type"),
        ({"query": "q", "documents": ["a"]}, 400, "model_required"),  # two rerankers are served
        ({**OK, "documents": ["x " * 9000]}, 400, "too_many_tokens"),  # LLM_RERANK_MAX_TOKENS_PER_DOC
        ({**OK, "model": QWEN, "documents": ["x " * 9000]}, 400, "too_many_tokens"),
        ({**OK, "documents": ["x" * 300_000]}, 400, "too_many_tokens"),  # refused before tokenising
        ({**OK, "query": "x " * 9000}, 400, "too_many_tokens"),
        ({"model": BERT, "query": "q", "texts": ["x " * 600], "truncate": False}, 400, "context_length_exceeded"),
        ({**OK, "query": 5}, 422, "validation_error"),
        ({**OK, "query": None}, 422, "validation_error"),
        ({"model": BERT, "documents": ["a"]}, 422, "validation_error"),
        ({"model": BERT, "query": "q"}, 422, "validation_error"),
        ({**OK, "texts": ["a"]}, 422, "validation_error"),
        ({**OK, "documents": "a"}, 422, "validation_error"),
        ({**OK, "documents": [1, 2]}, 422, "validation_error"),
        ({**OK, "documents": [None]}, 422, "validation_error"),
        ({**OK, "documents": [{"title": "no text"}]}, 422, "validation_error"),
        ({**OK, "documents": [["a"]]}, 422, "validation_error"),
        ({**OK, "top_n": "2"}, 422, "validation_error"),
        ({**OK, "top_n": -1}, 422, "validation_error"),
        ({**OK, "top_k": 1.5}, 422, "validation_error"),
        ({**OK, "return_documents": "yes"}, 422, "validation_error"),
        ({**OK, "raw_scores": 1}, 422, "validation_error"),
        ({**OK, "max_tokens_per_doc": 0}, 422, "validation_error"),
        ({**OK, "model": 5}, 422, "validation_error"),
        ({**OK, "model": ""}, 422, "validation_error"),
        ({**OK, "instruction": ["x"]}, 422, "validation_error"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_bad_input(http: httpx.Client, path: str, body: dict[str, Any], status: int, code: str) -> None:
    assert_envelope(http.post(path, json=body), status, code)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b'"text"'])
def test_malformed_body_is_422(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert_envelope(response, 422)


def test_limits_name_the_param(http: httpx.Client) -> None:
    error = assert_envelope(http.post("/v1/rerank", json={**OK, "documents": ["d"] * 1001}), 400)
    assert error["param"] == "documents" and "1000" in error["message"]
    error = assert_envelope(http.post("/v1/rerank", json={**OK, "documents": ["ok", "x " * 9000]}), 400)
    assert error["param"] == "documents" and "documents[1]" in error["message"]


def test_a_bad_request_does_not_disturb_the_next(http: httpx.Client) -> None:
    assert_envelope(http.post("/v1/rerank", json={**OK, "documents": ["x " * 9000]}), 400)
    response = http.post("/v1/rerank", json=OK)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2


# --- pure units: body size limit, default model, ranking ---------------------------------------------------------


def body_limited_app(max_bytes: int) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/rerank")
    async def echo(payload: dict[str, Any]) -> dict[str, int]:
        return {"keys": len(payload)}

    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    return app


async def test_body_over_the_limit_is_413() -> None:
    transport = httpx.ASGITransport(app=body_limited_app(1024))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        small = await client.post("/v1/rerank", json={"query": "q"})
        assert small.status_code == 200 and small.json() == {"keys": 1}
        declared = await client.post("/v1/rerank", json={"query": "q" * 2000})
        assert_envelope(declared, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it streams
            yield b'{"query": "'
            for _ in range(10):
                yield b"q" * 200
            yield b'"}'

        streamed = await client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
        assert_envelope(streamed, 413, "payload_too_large")


def snapshot_with(*models: tuple[str, ModelType]) -> Snapshot:
    infos = {name: ModelInfo(name, kind, f"/m/{name}", 0, None, None, None, False) for name, kind in models}
    return Snapshot(workers=[{"id": "w"}], models=infos, taken_at=time.monotonic())


async def test_default_model_is_the_only_reranker() -> None:
    directory = ModelDirectory(redis=None)  # type: ignore[arg-type]  # a fresh snapshot: Redis is never read
    directory._snapshot = snapshot_with(("r", ModelType.RERANKER), ("e", ModelType.EMBEDDING))
    assert await directory.default_model(ModelType.RERANKER) == "r"
    directory._snapshot = snapshot_with(("r1", ModelType.RERANKER), ("r2", ModelType.RERANKER))
    with pytest.raises(InvalidRequest, match="r1, r2"):
        await directory.default_model(ModelType.RERANKER)


@pytest.mark.parametrize(
    ("scores", "top_n", "top_k", "expected"),
    [
        ([0.1, 0.9, 0.5], None, None, [1, 2, 0]),
        ([0.5, 0.9, 0.5, 0.9, 0.5], None, None, [1, 3, 0, 2, 4]),  # ties keep the input order
        ([0.1, 0.9, 0.5], 2, None, [1, 2]),
        ([0.1, 0.9, 0.5], None, 1, [1]),
        ([0.1, 0.9, 0.5], 10, None, [1, 2, 0]),
        ([0.1, 0.9, 0.5], 0, None, [1, 2, 0]),
        ([0.1, 0.9, 0.5], 1, 2, [1]),  # top_n wins over top_k
        ([-3.0, 2.0, -1.0], None, None, [1, 2, 0]),  # raw scores (logits) sort the same way
    ],
)
def test_ranking(scores: list[float], top_n: int | None, top_k: int | None, expected: list[int]) -> None:
    request = RerankRequest(query="q", documents=["d"] * len(scores), top_n=top_n, top_k=top_k)
    assert request.ranking(scores) == expected
