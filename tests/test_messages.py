"""`/v1/messages` (Anthropic's Messages API) through the running stack with the Anthropic SDK: text, streaming
events, stop sequences, thinking blocks, tool_use -> tool_result, `x-api-key`, errors in Anthropic's envelope."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.stack import Stack
from tests.trained_models import THINK_ANSWER, THOUGHT

CHAT = "tiny-qwen2-chat"
TOOLS_MODEL = "tiny-qwen25-tools"
THINK_MODEL = "tiny-qwen3-think"
GREEDY = {"temperature": 0}  # the SDK no longer has `temperature`; the API still takes it (older clients send it)
WEATHER = {"name": "get_weather", "description": "Get the weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0)


def _chat(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{stack.base_url}/v1/chat/completions", json={**GREEDY, **body}, timeout=120)
    return dict(answer.json()["choices"][0])


def test_create_answers_what_chat_answers(client: anthropic.Anthropic, stack: Stack) -> None:
    message = client.messages.create(model=CHAT, max_tokens=10, system="Be brief.", extra_body=GREEDY,
                                     messages=[{"role": "user", "content": "Hello there"}])
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 10
    (block,) = message.content
    expected = _chat(stack, {"model": CHAT, "max_tokens": 10, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]})
    assert block.type == "text" and block.text == expected["message"]["content"]


def test_stream_events_assemble(client: anthropic.Anthropic) -> None:
    kinds: list[str] = []
    with client.messages.stream(model=CHAT, max_tokens=8, extra_body=GREEDY,
                                messages=[{"role": "user", "content": "Hello there"}]) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    whole = client.messages.create(model=CHAT, max_tokens=8, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Hello there"}])
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8


def test_stop_sequence_is_reported(client: anthropic.Anthropic, stack: Stack) -> None:
    text = _chat(stack, {"model": CHAT, "max_tokens": 12, "messages": [{"role": "user", "content": "Hi"}]})
    words = text["message"]["content"].split()
    stop = next(w for w in words[1:] if w)  # a word the model writes after its first
    message = client.messages.create(model=CHAT, max_tokens=12, extra_body=GREEDY, stop_sequences=[stop],
                                     messages=[{"role": "user", "content": "Hi"}])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert stop not in message.content[0].text  # type: ignore[union-attr]


def test_tool_use_then_tool_result(client: anthropic.Anthropic) -> None:
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    message = client.messages.create(model=TOOLS_MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],  # type: ignore[list-item]
                                     messages=[ask])  # type: ignore[list-item]
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and isinstance(use.input["city"], str)
    answer = client.messages.create(
        model=TOOLS_MODEL, max_tokens=30, extra_body=GREEDY, tools=[WEATHER],  # type: ignore[list-item]
        messages=[ask, {"role": "assistant", "content": message.content},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text" and answer.content[0].text


def test_streamed_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=TOOLS_MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],  # type: ignore[list-item]
                                messages=[{"role": "user", "content": "What is the weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert isinstance(use.input, dict) and isinstance(use.input["city"], str) and final.stop_reason == "tool_use"


def test_forced_tool_on_a_random_model(client: anthropic.Anthropic) -> None:
    booking = {"name": "book_hotel", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}}
    message = client.messages.create(model="tiny-qwen25-tools-random", max_tokens=60, tools=[booking],  # type: ignore[list-item]
                                     tool_choice={"type": "tool", "name": "book_hotel"},
                                     messages=[{"role": "user", "content": "Anything."}])
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "book_hotel" and use.input["city"] in ("Paris", "Rome", "Oslo")  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_block(client: anthropic.Anthropic, stream: bool) -> None:
    args: dict[str, Any] = {"model": THINK_MODEL, "max_tokens": 40, "extra_body": GREEDY,
                            "messages": [{"role": "user", "content": "Hello!"}]}
    if stream:
        with client.messages.stream(**args) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**args)
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking.strip() == THOUGHT
    assert text.type == "text" and text.text.strip() == THINK_ANSWER
    off = client.messages.create(**args, thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"] and off.content[0].text.strip() == THINK_ANSWER  # type: ignore[union-attr]


def test_output_config_json_schema(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    message = client.messages.create(model=CHAT, max_tokens=40, messages=[{"role": "user", "content": "A number"}],
                                     output_config={"format": {"type": "json_schema", "schema": schema}})
    assert isinstance(json.loads(message.content[0].text)["n"], int)  # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"model": CHAT, "messages": [{"role": "user", "content": "x"}]}, 422, "invalid_request_error"),
    ({"model": CHAT, "max_tokens": 5, "messages": []}, 422, "invalid_request_error"),
    ({"model": CHAT, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, 400,
     "invalid_request_error"),
    ({"model": CHAT, "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}, 422,
     "invalid_request_error"),
    ({"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 404,
     "not_found_error"),
    ({"model": CHAT, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 422, "invalid_request_error"),
])
def test_bad_input_in_anthropics_envelope(stack: Stack, body: dict[str, Any], status: int, kind: str) -> None:
    answer = httpx.post(f"{stack.base_url}/v1/messages", json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == kind
    assert answer.json()["error"]["message"]
