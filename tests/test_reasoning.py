"""Reasoning models: the think block goes to `reasoning_content` (and `reasoning`), never into `content`,
streamed and not; `chat_template_kwargs` and `reasoning_effort` reach the template's switch."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from tests.stack import Stack
from tests.trained_models import THINK_ANSWER, THOUGHT

MODEL = "tiny-qwen3-think"
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def _ask(client: OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=40,  # type: ignore[arg-type]
                                          **extra).choices[0].message


def test_the_think_block_is_reasoning_not_content(client: OpenAI) -> None:
    message = _ask(client)
    extra = message.model_extra or {}
    assert extra["reasoning_content"].strip() == THOUGHT and extra["reasoning"] == extra["reasoning_content"]
    assert message.content.strip() == THINK_ANSWER and "think>" not in message.content


def test_streamed_reasoning_comes_apart(client: OpenAI) -> None:
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0,  # type: ignore[arg-type]
                                                max_tokens=40, stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
            assert not (delta.content and (delta.model_extra or {}).get("reasoning_content"))
    assert reasoning.strip() == THOUGHT and content.strip() == THINK_ANSWER


@pytest.mark.parametrize("switch", [{"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
                                    {"reasoning_effort": "none"}])
def test_thinking_can_be_switched_off(client: OpenAI, switch: dict[str, Any]) -> None:
    message = _ask(client, **switch)
    assert "reasoning_content" not in (message.model_extra or {})
    assert message.content.strip() == THINK_ANSWER


def test_reasoning_effort_turns_it_on_and_include_reasoning_drops_it(client: OpenAI) -> None:
    assert (_ask(client, reasoning_effort="high").model_extra or {})["reasoning_content"].strip() == THOUGHT
    message = _ask(client, extra_body={"include_reasoning": False})
    assert "reasoning_content" not in (message.model_extra or {})
    assert message.content.strip() == THINK_ANSWER


def test_completions_are_not_parsed(client: OpenAI) -> None:
    """The legacy endpoint returns what the model wrote, think markup included."""
    prompt = "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    text = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=20).choices[0].text
    assert text.startswith("<think>")
