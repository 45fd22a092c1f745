"""End to end rerank: httpx bodies as Cohere, Jina, TEI and the seed's clients send them -> API -> worker."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.stack import SLOW_MARKER, Stack, wait_until

BERT = "tiny-bert-reranker"
QWEN = "tiny-qwen3-reranker"

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital of France.",
    "The cat reads a book in the kitchen every morning.",
    "Berlin is the capital of Germany.",
    "yes",
    "",
    "Ünïcödé text with emoji 🚀 and CJK 漢字",
    "a long story " * 300,  # over the 512-token window: truncated, document side first
]


@pytest.fixture(scope="module")
def http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=120)


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def scores_by_index(results: list[dict[str, Any]], key: str = "relevance_score") -> list[float]:
    out = [math.nan] * len(results)
    for item in results:
        out[item["index"]] = item[key]
    return out


def assert_ranked(results: list[dict[str, Any]], key: str = "relevance_score") -> None:
    """Highest score first; equal scores keep the input order."""
    keys = [(-item[key], item["index"]) for item in results]
    assert keys == sorted(keys)


def test_cross_encoder_scores_equal_sentence_transformers(http: httpx.Client, models_dir: Path) -> None:
    body = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": DOCS})
    reference = CrossEncoder(str(models_dir / BERT), device="cpu").predict([(QUERY, d) for d in DOCS])
    got = np.array(scores_by_index(body["results"]), dtype=np.float32)
    assert np.abs(got - reference).max() <= 1e-5
    assert_ranked(body["results"])
    assert len(set(np.round(got, 4))) > 3  # the tiny model's scores are spread, so ordering means something


def test_cross_encoder_usage_counts_the_tokens_the_model_saw(http: httpx.Client, models_dir: Path) -> None:
    docs = DOCS[:3]
    body = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": docs})
    tokenizer = AutoTokenizer.from_pretrained(str(models_dir / BERT))
    expected = sum(len(tokenizer(QUERY, d)["input_ids"]) for d in docs)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    long = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": [DOCS[-1]]})
    assert long["usage"]["prompt_tokens"] == 512  # truncated to the window, not refused


def reference_p_yes(models_dir: Path, query: str, docs: list[str], instruction: str) -> list[float]:
    """P("yes") as the Qwen3-Reranker model card computes it, one unpadded pair at a time."""
    tokenizer = AutoTokenizer.from_pretrained(str(models_dir / QWEN))
    model = AutoModelForCausalLM.from_pretrained(str(models_dir / QWEN), dtype=torch.float32).eval()
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)
    room = 512 - len(prefix_ids) - len(suffix_ids)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    out = []
    for doc in docs:
        text = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
        ids = prefix_ids + tokenizer.encode(text, add_special_tokens=False)[:room] + suffix_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        out.append(torch.softmax(torch.stack([logits[no], logits[yes]]), dim=0)[1].item())
    return out


def test_qwen3_reranker_scores_equal_p_yes(http: httpx.Client, models_dir: Path) -> None:
    body = post(http, "/v1/rerank", {"model": QWEN, "query": QUERY, "documents": DOCS})
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    reference = reference_p_yes(models_dir, QUERY, DOCS, instruction)
    assert np.abs(np.array(scores_by_index(body["results"])) - reference).max() <= 1e-5
    assert_ranked(body["results"])


def test_qwen3_reranker_takes_an_instruction(http: httpx.Client, models_dir: Path) -> None:
    instruction = "Judge whether the passage names a city"
    body = post(http, "/v1/rerank", {"model": QWEN, "query": QUERY, "documents": DOCS[:3],
                                     "instruction": instruction})
    reference = reference_p_yes(models_dir, QUERY, DOCS[:3], instruction)
    assert np.abs(np.array(scores_by_index(body["results"])) - reference).max() <= 1e-5


def test_cohere_v1_shape(http: httpx.Client) -> None:
    """cohere.Client.rerank: documents as strings or {"text": ...}, top_n, return_documents."""
    documents: list[Any] = [DOCS[0], {"text": DOCS[1], "title": "ignored"}, DOCS[2], {"text": DOCS[3]}]
    body = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": documents, "top_n": 2,
                                     "return_documents": True, "max_chunks_per_doc": 10})
    assert set(body) == {"id", "model", "results", "usage", "meta"}
    assert body["id"].startswith("rerank-") and body["model"] == BERT
    assert body["meta"] == {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}
    assert len(body["results"]) == 2
    texts = [d if isinstance(d, str) else d["text"] for d in documents]
    for item in body["results"]:
        assert set(item) == {"index", "relevance_score", "document"}
        assert item["document"] == {"text": texts[item["index"]]}
    everything = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": documents,
                                           "return_documents": False})["results"]
    assert all(set(item) == {"index", "relevance_score"} for item in everything)
    assert body["results"] == [{**item, "document": {"text": texts[item["index"]]}} for item in everything[:2]]


def test_cohere_v2_shape(http: httpx.Client) -> None:
    """cohere.ClientV2.rerank: strings only, top_n, max_tokens_per_doc; no documents in the answer."""
    body = post(http, "/v2/rerank", {"model": BERT, "query": QUERY, "documents": DOCS, "top_n": 3,
                                     "max_tokens_per_doc": 4096})
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert [set(item) for item in body["results"]] == [{"index", "relevance_score"}] * 3
    assert_ranked(body["results"])
    full = post(http, "/v2/rerank", {"model": BERT, "query": QUERY, "documents": DOCS})
    all_scores = scores_by_index(full["results"])
    assert [item["relevance_score"] for item in body["results"]] == sorted(all_scores, reverse=True)[:3]


def test_max_tokens_per_doc_truncates_documents(http: httpx.Client, models_dir: Path) -> None:
    doc = "the cat reads a book " * 10
    short = post(http, "/v2/rerank", {"model": BERT, "query": QUERY, "documents": [doc], "max_tokens_per_doc": 5})
    tokenizer = AutoTokenizer.from_pretrained(str(models_dir / BERT))
    cut = tokenizer.decode(tokenizer(doc, add_special_tokens=False)["input_ids"][:5])
    same = post(http, "/v2/rerank", {"model": BERT, "query": QUERY, "documents": [cut]})
    assert short["usage"] == same["usage"]
    assert abs(short["results"][0]["relevance_score"] - same["results"][0]["relevance_score"]) <= 1e-6


def test_jina_shape(http: httpx.Client) -> None:
    """Jina (also vLLM, LocalAI, llama.cpp): documents come back by default; usage."""
    body = post(http, "/v1/rerank", {"model": QWEN, "query": QUERY, "documents": DOCS[:4], "top_n": 10})
    assert len(body["results"]) == 4  # top_n above the count: every document
    for item in body["results"]:
        assert item["document"] == {"text": DOCS[item["index"]]}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert sorted(item["index"] for item in body["results"]) == [0, 1, 2, 3]
    no_docs = post(http, "/v1/rerank", {"model": QWEN, "query": QUERY, "documents": DOCS[:4],
                                        "return_documents": False, "top_n": 0})
    assert len(no_docs["results"]) == 4 and "document" not in no_docs["results"][0]


def test_seed_shape_top_k(http: httpx.Client) -> None:
    body = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": DOCS, "top_k": 2})
    full = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": DOCS})
    assert body["results"] == full["results"][:2]


def test_tei_shape_on_rerank(http: httpx.Client) -> None:
    """TEI: {"query", "texts", "raw_scores", "return_text"} -> [{"index", "score", "text"?}]."""
    probs = post(http, "/rerank", {"model": BERT, "query": QUERY, "texts": DOCS[:4], "return_text": True})
    assert isinstance(probs, list) and len(probs) == 4
    assert all(set(item) == {"index", "score", "text"} and item["text"] == DOCS[item["index"]] for item in probs)
    assert_ranked(probs, "score")
    raw = post(http, "/rerank", {"model": BERT, "query": QUERY, "texts": DOCS[:4], "raw_scores": True,
                                 "truncate": True})
    assert all(set(item) == {"index", "score"} for item in raw)
    sigmoid = [1 / (1 + math.exp(-s)) for s in scores_by_index(raw, "score")]
    assert np.allclose(sigmoid, scores_by_index(probs, "score"), atol=1e-6)
    assert [item["index"] for item in raw] == [item["index"] for item in probs]  # sigmoid keeps the order


def test_raw_scores_of_the_causal_reranker_are_log_odds(http: httpx.Client) -> None:
    probs = scores_by_index(post(http, "/rerank", {"model": QWEN, "query": QUERY, "texts": DOCS[:3]}), "score")
    raw = scores_by_index(post(http, "/rerank", {"model": QWEN, "query": QUERY, "texts": DOCS[:3],
                                                 "raw_scores": True}), "score")
    assert np.allclose([1 / (1 + math.exp(-s)) for s in raw], probs, atol=1e-6)


def test_union_shape_on_bare_rerank(http: httpx.Client) -> None:
    body = post(http, "/rerank", {"model": BERT, "query": QUERY, "documents": DOCS[:2]})
    assert {"id", "results", "usage"} <= set(body)


def test_ties_keep_input_order_and_indices_map_back(http: httpx.Client) -> None:
    documents = ["the cat", "a dog", "the cat", "the bridge", "the cat", "a dog"]
    results = post(http, "/v1/rerank", {"model": BERT, "query": "cat", "documents": documents})["results"]
    assert_ranked(results)
    assert sorted(item["index"] for item in results) == list(range(len(documents)))
    by_index = scores_by_index(results)
    assert abs(by_index[0] - by_index[2]) <= 1e-6 and abs(by_index[0] - by_index[4]) <= 1e-6
    for item in results:
        assert item["document"]["text"] == documents[item["index"]]


def test_many_documents_batch_and_match_single_requests(http: httpx.Client) -> None:
    documents = [f"document {i}: {'the cat reads' if i % 3 else 'a dog builds'} {'a book ' * (i % 40)}"
                 for i in range(300)]
    body = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": documents,
                                     "return_documents": False})
    many = scores_by_index(body["results"])
    for i in (0, 17, 299):
        one = post(http, "/v1/rerank", {"model": BERT, "query": QUERY, "documents": [documents[i]]})
        assert abs(one["results"][0]["relevance_score"] - many[i]) <= 1e-5


def test_concurrent_requests_share_batches_and_each_get_their_own_scores(stack: Stack, models_dir: Path) -> None:
    """Pairs of many jobs are batched together; each answer must still be its own job's scores."""
    jobs = [(f"query {i}: who {('reads', 'builds', 'paints')[i % 3]} it?",
             [f"doc {i}.{j} the farmer {'sells bread ' * (j + i % 4)}" for j in range(1 + i % 5)]) for i in range(24)]
    reference = CrossEncoder(str(models_dir / BERT), device="cpu")

    async def run() -> list[Any]:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
            responses = await asyncio.gather(*[
                client.post("/v1/rerank", json={"model": BERT, "query": q, "documents": d}) for q, d in jobs])
        return [r.json() for r in responses]

    for (query, docs), body in zip(jobs, asyncio.run(run()), strict=True):
        expected = reference.predict([(query, d) for d in docs])
        assert np.abs(np.array(scores_by_index(body["results"])) - expected).max() <= 1e-5


def test_a_rerank_caller_who_hangs_up_cancels_the_job(stack: Stack) -> None:
    """Every inference route cancels its job when its caller leaves (rerank used not to): the worker drops the
    job's remaining pairs."""
    def stats() -> dict[str, Any]:
        worker: Any = stack.health()["workers"][0]
        return dict(worker["stats"])

    # Resident first: after the suite's other models it may be parked, and a job cancelled while its model loads
    # has no pairs to drop.
    warm = httpx.post(f"{stack.base_url}/v1/rerank", json={"model": "tiny-bert-reranker", "query": "q",
                                                            "documents": ["d"]}, timeout=120)
    assert warm.status_code == 200
    before = stats().get("reranker_dropped", 0)
    body = json.dumps({"model": "tiny-bert-reranker", "query": SLOW_MARKER,
                       "documents": [f"document number {i} " * 40 for i in range(1000)]}).encode()
    host, port = stack.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: stats().get("reranker_jobs", 0) >= 1, 30, "the rerank job admitted")
    wait_until(lambda: stats().get("reranker_dropped", 0) > before, 20, "the job dropped after the hang-up")
    wait_until(lambda: stats().get("reranker_jobs", 0) == 0, 10, "the worker free")
