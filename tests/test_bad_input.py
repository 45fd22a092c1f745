"""Bad input is the client's fault, never the server's: every value that could not cross to a worker is refused
at the API with a 4xx in the OpenAI envelope and a non-null code, and the client's keep-alive connection serves
its next request (a 500 used to drop it). Over every POST route: lone surrogates in every text field, 2**64 in
every integer field, out-of-vocabulary token ids, and a JSON schema the grammar backend rejects."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.stack import Stack

S = "a\ud800b"  # a lone surrogate: JSON can spell it ("\\ud800"), UTF-8 cannot
BIG = 2**64
MINILM, CHAT, BERT = "all-minilm-l6-v2", "tiny-qwen3-chat", "tiny-bert-reranker"
EMB = {"model": MINILM, "input": "hello"}
MSG = [{"role": "user", "content": "hi"}]
CH = {"model": CHAT, "messages": MSG, "max_tokens": 2}
CMPL = {"model": CHAT, "prompt": "hi", "max_tokens": 2}
RR = {"model": BERT, "query": "q", "documents": ["a", "b"]}
BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}


def schema_format(schema: dict[str, Any], name: str = "r") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


TEXT_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/embeddings", {**EMB, "input": S}), ("/v1/embeddings", {**EMB, "input": ["ok", S]}),
    ("/v1/embeddings", {**EMB, "model": S}), ("/v1/embeddings", {**EMB, "user": S}),
    ("/v1/chat/completions", {**CH, "messages": [{"role": "user", "content": S}]}),
    ("/v1/chat/completions", {**CH, "messages": [{"role": "user", "content": [{"type": "text", "text": S}]}]}),
    ("/v1/chat/completions", {**CH, "messages": [{"role": "user", "content": "hi", "name": S}]}),
    ("/v1/chat/completions", {**CH, "stop": S}), ("/v1/chat/completions", {**CH, "user": S}),
    ("/v1/chat/completions", {**CH, "model": S}),
    ("/v1/chat/completions", {**CH, "response_format": schema_format({"type": "object"}, name=S)}),
    ("/v1/chat/completions", {**CH, "response_format": schema_format({"type": "object", "description": S})}),
    ("/v1/completions", {**CMPL, "prompt": S}), ("/v1/completions", {**CMPL, "prompt": ["ok", S]}),
    ("/v1/completions", {**CMPL, "stop": [S]}), ("/v1/completions", {**CMPL, "suffix": S}),
    ("/v1/responses", {"model": CHAT, "input": S}),
    ("/v1/responses", {"model": CHAT, "input": "hi", "instructions": S}),
    *[(route, body) for route in ("/v1/rerank", "/v2/rerank", "/rerank") for body in (
        {**RR, "query": S}, {**RR, "documents": ["ok", S]}, {**RR, "documents": [{"text": S}]},
        {**RR, "instruction": S}, {**RR, "model": S})],
    ("/rerank", {"query": "q", "texts": ["ok", S]}),
    ("/v1/batches", {"input_file_id": S, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
    ("/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/embeddings", "metadata": {"k": S}}),
]
INT_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/embeddings", {**EMB, "dimensions": BIG}), ("/v1/embeddings", {**EMB, "input": [1, BIG]}),
    ("/v1/embeddings", {**EMB, "input": [[1], [BIG]]}),
    *[("/v1/chat/completions", {**CH, field: BIG}) for field in ("max_tokens", "max_completion_tokens", "seed", "n")],
    ("/v1/chat/completions", {**CH, "logprobs": True, "top_logprobs": BIG}),
    ("/v1/chat/completions", {**CH, "seed": 2**63}),  # fits the wire, not a seed
    ("/v1/chat/completions", {**CH, "response_format": schema_format({"type": "integer", "maximum": BIG})}),
    *[("/v1/completions", {**CMPL, field: BIG}) for field in ("max_tokens", "logprobs", "best_of", "seed", "n")],
    ("/v1/completions", {**CMPL, "prompt": [1, BIG]}),
    *[("/v1/rerank", {**RR, field: BIG}) for field in ("top_n", "top_k", "max_tokens_per_doc", "max_chunks_per_doc")],
]
ENGINE_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/completions", {**CMPL, "prompt": [1, 2, 10**6]}, "invalid_token_id"),  # out of the vocabulary
    ("/v1/embeddings", {**EMB, "input": [[1, 2, 10**6]]}, "invalid_token_id"),
    ("/v1/chat/completions", {**CH, "response_format": schema_format(BAD_SCHEMA)}, "invalid_json_schema"),
]


class KeepAlive:
    """One HTTP/1.1 connection for the whole table: each bad request, then a good one on the same socket."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()  # ensure_ascii: "\ud800" stays an escape
        self.conn.request(method, path, body=data, headers={"content-type": "application/json"})
        response = self.conn.getresponse()
        payload = response.read()
        assert response.getheader("connection", "").lower() != "close", (path, response.status, payload[:300])
        return response.status, json.loads(payload)

    def check(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        sock = self.conn.sock
        status, answer = self.request("POST", path, body)
        assert 400 <= status < 500, (path, body, status, answer)
        error = answer["error"]
        assert error["code"] and error["message"] and error["type"], (path, answer)
        assert self.conn.sock is sock and sock is not None  # the same connection, not a reconnect
        status, models = self.request("GET", "/v1/models")
        assert status == 200 and models["object"] == "list"
        assert self.conn.sock is sock
        return dict(error)


@pytest.fixture()
def wire(stack: Stack) -> KeepAlive:
    client = KeepAlive(stack.base_url)
    assert client.request("GET", "/v1/models")[0] == 200  # connect once
    return client


def test_lone_surrogates_in_every_text_field_are_a_400_naming_it(wire: KeepAlive) -> None:
    for path, body in TEXT_FIELDS:
        error = wire.check(path, body)
        assert error["code"] == "invalid_unicode" and error["param"], (path, error)


def test_integers_past_what_the_field_or_the_wire_takes_are_4xx(wire: KeepAlive) -> None:
    for path, body in INT_FIELDS:
        error = wire.check(path, body)
        assert error["code"] in ("integer_out_of_range", "validation_error"), (path, error)


@pytest.mark.parametrize(("path", "body", "code"), ENGINE_REFUSALS)
def test_what_the_engine_would_refuse_is_a_400_with_its_reason(wire: KeepAlive, path: str, body: dict[str, Any],
                                                                code: str) -> None:
    error = wire.check(path, body)
    assert error["code"] == code, error


def test_valid_requests_still_pass_on_the_same_connection(wire: KeepAlive) -> None:
    assert wire.request("POST", "/v1/embeddings", {**EMB, "input": "caf\u00e9 \U0001f600"})[0] == 200
    good = {**CH, "response_format": schema_format({"type": "object", "properties": {"a": {"type": "integer"}}})}
    assert wire.request("POST", "/v1/chat/completions", good)[0] == 200


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/complete"), ("GET", "/v1/nothing-here"),
                                              ("POST", "/v1/messages/count_tokens")])
def test_an_unknown_route_is_unsupported_endpoint_naming_it(wire: KeepAlive, method: str, path: str) -> None:
    status, body = wire.request(method, path, {})
    assert status == 404 and body["error"]["code"] == "unsupported_endpoint"
    assert path in body["error"]["message"]
