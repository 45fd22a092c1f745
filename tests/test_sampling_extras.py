"""vLLM's sampling extras and OpenAI's logit_bias change the output as they should, on both engines: the same
weights on vLLM (tiny-qwen2-chat) and on transformers (tiny-qwen2-chat-hf) answer alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from tests.stack import Stack
from tests.test_chat import MESSAGES, hf_greedy

VLLM, HF = "tiny-qwen2-chat", "tiny-qwen2-chat-hf"
ENGINES = [VLLM, HF]


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def greedy(models_dir: Path) -> list[int]:
    """The greedy answer's tokens (transformers' generate, which both engines match)."""
    tokens, _ = hf_greedy(models_dir / VLLM, MESSAGES, 16)
    return tokens


def _chat(client: OpenAI, model: str, max_tokens: int = 16, **extra: Any) -> Any:
    body = {k: extra.pop(k) for k in list(extra) if k in ("logit_bias", "seed", "temperature")}
    return client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens,  # type: ignore[call-overload]
                                          **{"temperature": 0, **body}, extra_body=extra).choices[0]


def _both(client: OpenAI, **extra: Any) -> str:
    """The answer, the same on both engines."""
    texts = {model: _chat(client, model, **dict(extra)).message.content for model in ENGINES}
    assert texts[VLLM] == texts[HF], texts
    return str(texts[VLLM])


def test_logit_bias_bans_and_forces_tokens(client: OpenAI, models_dir: Path, greedy: list[int]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / VLLM)
    plain = _both(client)
    bias = {str(t): -100 for t in set(greedy)}
    assert _both(client, logit_bias=bias) != plain
    answer = client.chat.completions.create(model=VLLM, messages=MESSAGES, max_tokens=16, temperature=0,  # type: ignore[arg-type]
                                            logit_bias=bias, logprobs=True)  # type: ignore[arg-type]
    sampled = [lp.token for lp in (answer.choices[0].logprobs and answer.choices[0].logprobs.content) or []]
    assert len(sampled) == 16 and not {tokenizer.decode([t]) for t in greedy} & set(sampled)
    forced = tokenizer.convert_tokens_to_ids("yes")
    assert _both(client, logit_bias={str(forced): 100}) == "yes" * 16


def test_min_tokens_delays_the_end(client: OpenAI, greedy: list[int]) -> None:
    stop_at = greedy[2]
    for model in ENGINES:
        short = _chat(client, model, max_tokens=16, stop_token_ids=[stop_at])
        assert short.finish_reason == "stop"
        longer = _chat(client, model, max_tokens=16, stop_token_ids=[stop_at], min_tokens=10)
        assert len(longer.message.content) > len(short.message.content)
    assert _both(client, stop_token_ids=[stop_at], min_tokens=10)


def test_ignore_eos_runs_to_max_tokens(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Hello!"}]
    ended = client.chat.completions.create(model="tiny-qwen3-think", messages=messages, temperature=0,  # type: ignore[arg-type]
                                           max_tokens=60)
    assert ended.choices[0].finish_reason == "stop" and ended.usage and ended.usage.completion_tokens < 60
    ran = client.chat.completions.create(model="tiny-qwen3-think", messages=messages, temperature=0,  # type: ignore[arg-type]
                                         max_tokens=60, extra_body={"ignore_eos": True})
    assert ran.choices[0].finish_reason == "length" and ran.usage and ran.usage.completion_tokens == 60


def test_top_k_and_min_p_narrow_sampling_to_the_best_token(client: OpenAI) -> None:
    plain = _both(client)
    for model in ENGINES:
        hot = _chat(client, model, temperature=1.5, seed=1).message.content
        assert hot != plain  # sampling differs from greedy at this temperature...
        assert _chat(client, model, temperature=1.5, seed=1, top_k=1).message.content == plain  # ...unless only
        assert _chat(client, model, temperature=1.5, seed=1, min_p=1.0).message.content == plain  # one can win


def test_penalties_change_the_output_alike(client: OpenAI) -> None:
    plain = _both(client)
    assert _both(client, repetition_penalty=1.5) != plain
    assert _both(client, frequency_penalty=1.5, presence_penalty=0.5) != plain


def test_skip_special_tokens(client: OpenAI, models_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / VLLM)
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert _both(client, max_tokens=3, logit_bias={str(special): 100}) == ""
    shown = _both(client, max_tokens=3, logit_bias={str(special): 100}, skip_special_tokens=False)
    assert shown == "<|im_start|>" * 3


def test_completions_take_the_extras(client: OpenAI, models_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(models_dir / VLLM)
    forced = tokenizer.convert_tokens_to_ids("no")
    for model in ENGINES:
        text = client.completions.create(model=model, prompt="the cat", max_tokens=4, temperature=0,
                                         logit_bias={str(forced): 100}).choices[0].text
        assert text == "no" * 4


@pytest.mark.parametrize(("extra", "param"), [
    ({"logit_bias": {"abc": 1}}, "logit_bias"), ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"), ({"stop_token_ids": [99999999]}, "stop_token_ids"),
    ({"min_tokens": 50, "max_tokens": 10}, "min_tokens"), ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_bad_extras_are_refused_naming_them(stack: Stack, extra: dict[str, Any], param: str) -> None:
    """A value outside a field's range is a 422 (the body's shape, like temperature), the rest a 400."""
    import httpx

    body = {"model": VLLM, "messages": MESSAGES, "max_tokens": 4, **extra}
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["param"] == param
