"""End to end: the real OpenAI SDK -> API process -> Redis -> worker process -> back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import redis
import tiktoken
from openai import AsyncOpenAI, OpenAI
from sentence_transformers import SentenceTransformer

from common import keys
from tests.stack import Stack, wait_until

MINILM = "all-minilm-l6-v2"
QWEN_EMB = "tiny-qwen3-embedding"

TEXTS = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Quarterly earnings beat analyst expectations.",
    "How do I bake sourdough bread at home?",
    "Ünïcödé text with emoji 🚀 and CJK 漢字",
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def minilm(models_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(models_dir / MINILM), device="cpu")


def test_sdk_default_base64_matches_sentence_transformers(client: OpenAI, minilm: SentenceTransformer) -> None:
    response = client.embeddings.create(model=MINILM, input=TEXTS)  # the SDK asks for base64
    got = np.array([d.embedding for d in response.data])
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert np.all(cosine(got, minilm.encode(TEXTS)) >= 0.9999)


def test_float_format_and_usage(client: OpenAI, minilm: SentenceTransformer) -> None:
    response = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in response.data])
    assert got.shape == (len(TEXTS), 384)
    assert np.all(cosine(got, minilm.encode(TEXTS)) >= 0.9999)
    expected_tokens = sum(len(minilm.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert response.usage.prompt_tokens == expected_tokens == response.usage.total_tokens


def test_paraphrase_scores_above_unrelated(client: OpenAI) -> None:
    data = client.embeddings.create(model=MINILM, input=TEXTS[:3]).data
    cat, rug, money = (np.array(d.embedding) for d in data)
    assert cosine(cat, rug) > cosine(cat, money) + 0.2


def test_dimensions_truncate_and_renormalise(client: OpenAI, minilm: SentenceTransformer) -> None:
    data = client.embeddings.create(model=MINILM, input=TEXTS[:2], dimensions=64).data
    full = minilm.encode(TEXTS[:2])[:, :64]
    for d, ref in zip(data, full, strict=True):
        vec = np.array(d.embedding)
        assert vec.shape == (64,)
        assert abs(np.linalg.norm(vec) - 1.0) < 1e-5
        assert cosine(vec, ref) >= 0.9999


def test_token_inputs_equal_text_inputs(client: OpenAI) -> None:
    """Token ids are OpenAI's cl100k_base ids (LLM_EMBEDDING_TOKEN_IDS=cl100k, the default): embedded as their text.
    The model-vocabulary reading: tests/test_embedding_token_ids.py."""
    ids = [tiktoken.get_encoding("cl100k_base").encode(t) for t in TEXTS[:2]]
    by_tokens = client.embeddings.create(model=MINILM, input=ids).data
    single = client.embeddings.create(model=MINILM, input=ids[0]).data
    by_text = client.embeddings.create(model=MINILM, input=TEXTS[:2]).data
    for a, b in zip(by_tokens, by_text, strict=True):
        assert cosine(np.array(a.embedding), np.array(b.embedding)) >= 0.99999
    assert len(single) == 1
    assert cosine(np.array(single[0].embedding), np.array(by_text[0].embedding)) >= 0.99999


@pytest.mark.parametrize("model", [QWEN_EMB, f"{QWEN_EMB}-st6"])
def test_qwen3_style_last_token_model_round_trips(client: OpenAI, models_dir: Path, model: str) -> None:
    reference = SentenceTransformer(str(models_dir / model), device="cpu").encode(TEXTS)
    got = np.array([d.embedding for d in client.embeddings.create(model=model, input=TEXTS).data])
    assert got.shape == reference.shape
    assert np.all(cosine(got, reference) >= 0.9999)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_200_concurrent_requests_each_get_their_own_vectors(
        stack: Stack, minilm: SentenceTransformer) -> None:
    texts = [f"request {i}: the number {i * 7919 % 1000} is {'odd' if i % 2 else 'even'}" for i in range(200)]
    reference = minilm.encode(texts)

    async def run() -> list[np.ndarray]:
        async with AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0) as client:
            responses = await asyncio.gather(*[client.embeddings.create(model=MINILM, input=t) for t in texts])
        return [np.array(r.data[0].embedding) for r in responses]

    got = np.stack(asyncio.run(run()))
    sims = cosine(got[:, None, :], reference[None, :, :])  # every answer against every reference
    assert np.all(np.argmax(sims, axis=1) == np.arange(200))
    assert np.all(np.diag(sims) >= 0.9999)


def test_answered_result_streams_are_deleted(client: OpenAI, stack: Stack) -> None:
    """The API deletes a request's result stream once it has read the answer (with its next read of Redis)."""
    db = redis.Redis.from_url(stack.redis_url)
    try:
        def result_streams() -> int:
            return sum(1 for _ in db.scan_iter(match=keys.RESULT_STREAM_PREFIX + "*", count=1000))

        before = result_streams()
        for i in range(5):
            client.embeddings.create(model=MINILM, input=f"text number {i}")
        wait_until(lambda: result_streams() <= before, 10, "answered result streams deleted")
    finally:
        db.close()
