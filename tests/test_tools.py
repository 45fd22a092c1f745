"""Tool calling on /v1/chat/completions through the running stack, with the OpenAI SDK: the trained tool model
decides (auto), the random one is held to the schema by the grammar (required, named), on both engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from tests.batch_helpers import file_lines, start_batch, wait_final, write_lines
from tests.stack import Stack

TOOLS_MODEL = "tiny-qwen25-tools"
RANDOM_MODEL = "tiny-qwen25-tools-random"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A schema a random model would never meet by chance: an enum, a bounded integer, nothing else allowed.
BOOKING_SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
    "nights": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "nights"], "additionalProperties": False}
BOOKING = {"type": "function", "function": {"name": "book_hotel", "parameters": BOOKING_SCHEMA}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def _post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize("model", [TOOLS_MODEL, f"{TOOLS_MODEL}-hf"])
def test_the_model_calls_the_tool_when_it_should(client: OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
                                            temperature=0, max_tokens=60)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert not choice.message.content  # the markup never leaks into the text

    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a joke."}],
                                          tools=[WEATHER], temperature=0, max_tokens=30)  # type: ignore[list-item]
    assert chat.choices[0].finish_reason == "stop" and chat.choices[0].message.tool_calls is None
    assert chat.choices[0].message.content and "<tool_call>" not in chat.choices[0].message.content


def test_streamed_tool_calls_assemble(client: OpenAI) -> None:
    stream = client.chat.completions.create(model=TOOLS_MODEL, messages=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
                                            temperature=0, max_tokens=60, stream=True)
    calls: dict[int, dict[str, str]] = {}
    content, finish, firsts = "", None, []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            if part.index not in calls:  # the first fragment of a call carries its id, type and name
                firsts.append((part.id, part.type, part.function and part.function.name))
                calls[part.index] = {"arguments": ""}
            calls[part.index]["arguments"] += (part.function and part.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and not content.strip()
    (first,) = firsts
    assert first[0] and first[0].startswith("call_") and first[1:] == ("function", "get_weather")
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)


@pytest.mark.parametrize("model", [RANDOM_MODEL, f"{TOOLS_MODEL}-hf"])
def test_required_and_named_choices_follow_the_schema(client: OpenAI, model: str) -> None:
    """Random weights, yet every call is valid JSON for its schema: the grammar decides, not the model."""
    named = {"type": "function", "function": {"name": "book_hotel"}}
    for seed, choice in enumerate(["required", named, "required", named]):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Book me a hotel."}], tools=[WEATHER, BOOKING],  # type: ignore[list-item]
            tool_choice=choice, parallel_tool_calls=False, seed=seed, max_tokens=150)  # type: ignore[arg-type]
        result = answer.choices[0]
        (call,) = result.message.tool_calls or []
        if choice == named:
            assert call.function.name == "book_hotel" and result.finish_reason == "stop"  # OpenAI's, for named
        else:
            assert call.function.name in ("book_hotel", "get_weather") and result.finish_reason == "tool_calls"
        schema = BOOKING_SCHEMA if call.function.name == "book_hotel" else WEATHER["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)  # type: ignore[arg-type]


def test_a_history_of_calls_and_results_is_rendered(client: OpenAI) -> None:
    first = client.chat.completions.create(model=TOOLS_MODEL, messages=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
                                           temperature=0, max_tokens=60)
    call = (first.choices[0].message.tool_calls or [])[0]
    messages = [*ASK_WEATHER, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"condition": "sunny"})}]
    final = client.chat.completions.create(model=TOOLS_MODEL, messages=messages, tools=[WEATHER],  # type: ignore[arg-type,list-item]
                                           temperature=0, max_tokens=40)
    assert final.choices[0].message.tool_calls is None and final.choices[0].message.content


def test_tool_choice_none_reads_no_calls(client: OpenAI) -> None:
    answer = client.chat.completions.create(model=TOOLS_MODEL, messages=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
                                            tool_choice="none", temperature=0, max_tokens=60)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].finish_reason != "tool_calls"


def test_batch_chat_lines_call_tools(client: OpenAI, tmp_path: Path) -> None:
    body = {"model": TOOLS_MODEL, "messages": ASK_WEATHER, "tools": [WEATHER], "temperature": 0, "max_tokens": 60}
    lines = [{"custom_id": "weather", "method": "POST", "url": "/v1/chat/completions", "body": body}]
    batch = wait_final(client, start_batch(client, write_lines(tmp_path / "in.jsonl", lines),
                                           "/v1/chat/completions").id)
    (line,) = file_lines(client, batch.output_file_id)
    choice = line["response"]["body"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "banana"}}}]},
     "tools.0.function.parameters", "invalid_tool_schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools.0.function.parameters", "invalid_tool_schema"),
    ({"tools": [WEATHER, WEATHER]}, "tools.1.function.name", "duplicate_tool"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "absent"}}},
     "tool_choice", "unknown_tool"),
    ({"tool_choice": "required"}, "tool_choice", "invalid_request"),
    ({"messages": [*ASK_WEATHER, {"role": "tool", "tool_call_id": "call_nobody", "content": "{}"}]},
     "messages.1.tool_call_id", "unknown_tool_call_id"),
    ({"model": "tiny-qwen3-chat", "tools": [WEATHER]}, "tools", "tools_unsupported"),
    ({"model": "tiny-qwen3-chat", "reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
    ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs.tools", "invalid_request"),
])
def test_bad_tool_input_is_a_400_naming_it(stack: Stack, body: dict[str, Any], param: str, code: str) -> None:
    response = _post(stack, {"model": TOOLS_MODEL, "messages": ASK_WEATHER, "max_tokens": 8, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code, error
    if body.get("model") == "tiny-qwen3-chat":
        assert "tiny-qwen3-chat" in error["message"]


def test_a_schema_the_grammar_cannot_compile_is_a_400(stack: Stack) -> None:
    """Valid per the metaschema, refused by xgrammar (vLLM's grammar backend): refused before generation."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}}}}
    response = _post(stack, {"model": TOOLS_MODEL, "messages": ASK_WEATHER, "tools": [tool], "max_tokens": 8})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tools.0.function.parameters"


def test_models_show_the_parsers(stack: Stack) -> None:
    cards = {m["id"]: m for m in httpx.get(f"{stack.base_url}/v1/models", timeout=10).json()["data"]}
    assert cards[TOOLS_MODEL]["tool_parser"] == "hermes" and cards[TOOLS_MODEL]["reasoning_parser"] is None
    assert cards["tiny-qwen3-think"]["reasoning_parser"] == "qwen3"
    assert cards["tiny-qwen3-chat"]["tool_parser"] is None
    assert cards[TOOLS_MODEL]["context_length"] == 2048
    assert cards["all-minilm-l6-v2"]["tool_parser"] is None
