"""Chat streaming under concurrency, client disconnects, and bad input."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.stack import SLOW_MARKER, Stack

CHAT = "tiny-qwen3-chat"


def prompt(i: int) -> list[Any]:
    return [{"role": "user", "content": f"Story number {i}: {'dragons' if i % 2 else 'castles'} and {i * 37}"}]


def test_32_concurrent_streams_each_complete_and_their_own(stack: Stack) -> None:
    sync = OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    expected = [sync.chat.completions.create(model=CHAT, messages=prompt(i), max_tokens=24, temperature=0)
                .choices[0].message.content for i in range(32)]
    assert len(set(expected)) > 16  # the prompts really differ

    async def one(client: AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(model=CHAT, messages=prompt(i), max_tokens=24, temperature=0,
                                                      stream=True)
        parts, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish

    async def run() -> list[tuple[str, str | None]]:
        async with AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*[one(c, i) for i in range(32)])

    results = asyncio.run(run())
    assert [text for text, _ in results] == expected
    assert all(finish in ("stop", "length") for _, finish in results)


def chat_stats(stack: Stack) -> dict[str, int]:
    workers: Any = stack.health()["workers"]
    return dict(workers[0]["stats"])


def wait_for(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def slow(messages: list[Any]) -> list[Any]:
    """The same prompt, marked so that the worker streams it slowly (LLM_DEBUG_SLOW_ON in tests/stack.py):
    the answer is still running when the test hangs up, however fast the machine."""
    return [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']} {SLOW_MARKER}"}]


def test_disconnect_mid_stream_aborts_the_engine_request(stack: Stack) -> None:
    before = chat_stats(stack).get("chat_aborts", 0)
    # the transformers engine: its deltas reach the worker's job one by one (vLLM merges those of a slow reader)
    body = {"model": "tiny-qwen2-chat-hf", "messages": slow(prompt(1)), "max_tokens": 400, "temperature": 0,
            "stream": True}
    with httpx.Client(base_url=stack.base_url, timeout=300) as http, http.stream("POST", "/v1/chat/completions",
                                                                                  json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        chunks: list[str] = []
        for line in lines:
            if line.startswith("data: "):
                chunks.append(line)
            if len(chunks) == 3:
                break
        assert wait_for(lambda: chat_stats(stack).get("chat_jobs", 0) > 0, 10)
    # the connection is closed: the worker must abort the engine request
    assert wait_for(lambda: chat_stats(stack).get("chat_aborts", 0) > before, 10)
    # the job leaves the worker's books once its acknowledgement is written (a heartbeat may fall between)
    assert wait_for(lambda: chat_stats(stack)["chat_sequences"] == chat_stats(stack)["chat_jobs"] == 0, 10)
    stats = chat_stats(stack)
    assert 0 <= stats["chat_last_abort_latency_ms"] <= 1000  # measured on the worker: caller gone -> aborted


def test_non_stream_disconnect_cancels_too(stack: Stack) -> None:
    # the transformers engine, one sequence at a time, streamed slowly: far longer than the client waits
    warm = {"model": "tiny-qwen2-chat-hf", "messages": prompt(2), "max_tokens": 1}
    httpx.post(f"{stack.base_url}/v1/chat/completions", json=warm, timeout=300).raise_for_status()
    def gone() -> int:  # aborted mid-generation, or skipped because the caller left before it started
        stats = chat_stats(stack)
        return stats.get("chat_aborts", 0) + stats.get("chat_skipped", 0)

    assert wait_for(lambda: chat_stats(stack).get("chat_jobs", 1) == 0, 30)
    before = gone()
    body = {**warm, "messages": slow(prompt(2)), "max_tokens": 400, "n": 4, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=1.0)
    assert wait_for(lambda: gone() > before, 20)
    assert wait_for(lambda: chat_stats(stack).get("chat_jobs", 1) == 0, 20)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": CHAT, "messages": []}, 400, "empty_messages"),
    ({"model": CHAT}, 422, "validation_error"),
    ({"model": CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 422, "validation_error"),
    ({"model": CHAT, "messages": [{"role": "user", "content": 5}]}, 422, "validation_error"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422, "validation_error"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 422, "validation_error"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "n": 1000}, 400, "n_too_large"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 422, "validation_error"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ({"model": "all-minilm-l6-v2", "messages": [{"role": "user", "content": "hi"}]}, 400, "wrong_model_type"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}, 400, "context_length_exceeded"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400,
     "context_length_exceeded"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 422,
     "validation_error"),  # a tool without its function
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "wizardry": 1}, 400, "unsupported_parameter"),
    ({"model": CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "unsupported_content"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400, "invalid_request"),
    ({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 100000}, 400,
     "context_length_exceeded"),
    ({"model": CHAT, "prompt": ""}, 422, "validation_error"),
])
def test_bad_chat_input(stack: Stack, body: dict[str, Any], status: int, code: str | None) -> None:
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code


def test_over_long_prompt_message_names_the_counts(stack: Stack) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}
    message = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=300).json()["error"]["message"]
    assert "512" in message and "tokens" in message


@pytest.mark.parametrize(("body", "status"), [
    ({"model": CHAT, "prompt": ""}, 400),
    ({"model": CHAT, "prompt": []}, 400),
    ({"model": CHAT, "prompt": "hi", "echo": True}, 400),
    ({"model": CHAT, "prompt": "hi", "logprobs": 9}, 422),
    ({"model": CHAT, "prompt": 5}, 422),
])
def test_bad_completion_input(stack: Stack, body: dict[str, Any], status: int) -> None:
    response = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=300)
    assert response.status_code == status, response.text
    assert "error" in response.json()
