"""`/v1/responses` through the running stack with the OpenAI SDK and openai-agents' Responses model: text,
streaming events, reasoning items, function calls and their outputs, stored follow-ups, retrieval, bad input."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from agents import OpenAIResponsesModel
from openai import OpenAI

from tests.stack import Stack
from tests.test_clients_tools import run_weather_agent
from tests.trained_models import THINK_ANSWER, THOUGHT

CHAT = "tiny-qwen2-chat"
TOOLS_MODEL = "tiny-qwen25-tools"
THINK_MODEL = "tiny-qwen3-think"
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def _chat_text(stack: Stack, model: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    answer = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=120).json()
    return str(answer["choices"][0]["message"]["content"])


def test_create_answers_what_chat_answers(client: OpenAI, stack: Stack) -> None:
    response = client.responses.create(model=CHAT, input="Hello there", instructions="Be brief.",
                                       temperature=0, max_output_tokens=12)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant"
    expected = _chat_text(stack, CHAT, [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hello there"}], 12)
    assert response.output_text == expected
    assert response.usage is not None and response.usage.output_tokens == 12
    assert response.usage.total_tokens == response.usage.input_tokens + 12


def test_stream_sends_the_event_sequence(client: OpenAI) -> None:
    """Cut by max_output_tokens, the stream ends as OpenAI's does: `response.incomplete` (not `.completed`)."""
    kinds: list[str] = []
    text, final = "", None
    with client.responses.stream(model=CHAT, input="Hello there", temperature=0, max_output_tokens=8) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.incomplete":
                final = event.response
    assert final is not None and final.incomplete_details is not None
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert text and final.output_text == text
    numbers = []  # every event numbered in order
    with httpx.stream("POST", f"{client.base_url}responses", timeout=60,
                      json={"model": CHAT, "input": "Hi", "max_output_tokens": 4, "stream": True}) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: "):
                numbers.append(json.loads(line[6:])["sequence_number"])
    assert numbers == list(range(len(numbers)))


def test_previous_response_id_continues_the_conversation(client: OpenAI, stack: Stack) -> None:
    first = client.responses.create(model=CHAT, input="Hello there", temperature=0, max_output_tokens=6)
    second = client.responses.create(model=CHAT, input="And then?", previous_response_id=first.id,
                                     temperature=0, max_output_tokens=6)
    expected = _chat_text(stack, CHAT, [{"role": "user", "content": "Hello there"},
                                        {"role": "assistant", "content": first.output_text},
                                        {"role": "user", "content": "And then?"}], 6)
    assert second.output_text == expected and second.previous_response_id == first.id
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CHAT, input="x", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found"


def test_store_false_keeps_nothing(client: OpenAI) -> None:
    response = client.responses.create(model=CHAT, input="Hi", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_function_call_then_its_output(client: OpenAI) -> None:
    response = client.responses.create(model=TOOLS_MODEL, input="What is the weather in Paris?",
                                       tools=[WEATHER], temperature=0, max_output_tokens=60)  # type: ignore[list-item]
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    follow = client.responses.create(
        model=TOOLS_MODEL, previous_response_id=response.id, tools=[WEATHER], temperature=0,  # type: ignore[list-item]
        max_output_tokens=30, input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                      "output": "sunny"}])
    assert follow.output_text and not [item for item in follow.output if item.type == "function_call"]


def test_streamed_function_call(client: OpenAI) -> None:
    with client.responses.stream(model=TOOLS_MODEL, input="What is the weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
                                 temperature=0, max_output_tokens=60) as stream:
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.arguments == arguments and isinstance(json.loads(arguments)["city"], str)


def test_required_tool_choice_is_held_to_the_schema(client: OpenAI) -> None:
    booking = {"type": "function", "name": "book_hotel", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}}
    response = client.responses.create(model="tiny-qwen25-tools-random", input="Book something.",
                                       tools=[booking], tool_choice="required", max_output_tokens=60)  # type: ignore[list-item]
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "book_hotel" and json.loads(call.arguments)["city"] in ("Paris", "Rome", "Oslo")


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_is_its_own_item(client: OpenAI, stream: bool) -> None:
    if stream:
        with client.responses.stream(model=THINK_MODEL, input="Hello!", temperature=0,
                                     max_output_tokens=40) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=THINK_MODEL, input="Hello!", temperature=0, max_output_tokens=40)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text.strip() == THOUGHT
    assert message.type == "message" and response.output_text.strip() == THINK_ANSWER


def test_json_schema_text_format(client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    response = client.responses.create(model=CHAT, input="A number", max_output_tokens=40,
                                       text={"format": {"type": "json_schema", "name": "n", "schema": schema}})
    assert isinstance(json.loads(response.output_text)["n"], int)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": CHAT}, 422, "validation_error"),
    ({"model": CHAT, "input": 5}, 422, "validation_error"),
    ({"model": CHAT, "input": [{"type": "input_image", "image_url": "x"}]}, 400, "unsupported_input"),
    ({"model": CHAT, "input": [{"role": "user", "content": [{"type": "input_image"}]}]}, 400,
     "unsupported_content"),
    ({"model": CHAT, "input": "x", "background": True}, 400, "unsupported_parameter"),
    ({"model": CHAT, "input": "x", "conversation": "c1"}, 400, "unsupported_parameter"),
    ({"model": CHAT, "input": "x", "tools": [{"type": "web_search"}]}, 422, "validation_error"),
    ({"model": CHAT, "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, 400,
     "unknown_tool_call_id"),
    ({"model": "no-such-model", "input": "x"}, 404, "model_not_found"),
])
def test_bad_input_is_a_4xx_in_the_openai_envelope(stack: Stack, body: dict[str, Any], status: int,
                                                     code: str) -> None:
    answer = httpx.post(f"{stack.base_url}/v1/responses", json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


@pytest.mark.timeout(300)
def test_openai_agents_responses_model(stack: Stack) -> None:
    cities, output = run_weather_agent(stack.base_url, OpenAIResponsesModel)
    assert cities and isinstance(output, str) and output
