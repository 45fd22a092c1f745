"""Today's clients on their default paths against the running stack, changing only the base URL: instructor's
tools mode, LangChain's bind_tools loop and structured output, an openai-agents agent with a function tool."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import instructor
import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from tests.stack import Stack

TOOLS_MODEL = "tiny-qwen25-tools"
RANDOM_MODEL = "tiny-qwen25-tools-random"


class Booking(BaseModel):
    """Bounded fields: random weights would write a free string until max_tokens."""

    city: Literal["Paris", "Rome", "Oslo"] = Field(description="Where to stay")
    nights: int = Field(ge=1, le=7)


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return json.dumps({"city": city, "condition": "sunny"})


def test_instructor_tools_mode(stack: Stack) -> None:
    """instructor's default mode forces a named tool; the grammar makes even random weights produce a Booking."""
    client = instructor.from_openai(OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0))
    booking = client.chat.completions.create(model=RANDOM_MODEL, response_model=Booking, max_retries=0,
                                             max_tokens=150, messages=[{"role": "user", "content": "Book Rome."}])
    assert isinstance(booking, Booking) and 1 <= booking.nights <= 7


def _chat_model(stack: Stack, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=f"{stack.base_url}/v1", api_key="unused",  # type: ignore[arg-type]
                      temperature=0, max_tokens=150, max_retries=0)  # type: ignore[call-arg]


def test_langchain_bind_tools_loop(stack: Stack) -> None:
    """call -> ToolMessage -> answer, as an agent loop runs it."""
    llm = _chat_model(stack, TOOLS_MODEL).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    call_message = llm.invoke([question])
    (call,) = call_message.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"].startswith("call_")
    result = ToolMessage(content=get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.invoke([question, call_message, result])
    assert not answer.tool_calls and isinstance(answer.content, str) and answer.content  # type: ignore[attr-defined]


def test_langchain_structured_output_by_function_calling(stack: Stack) -> None:
    structured = _chat_model(stack, RANDOM_MODEL).with_structured_output(Booking, method="function_calling")
    booking = structured.invoke("Book a hotel in Oslo.")
    assert isinstance(booking, Booking)


def run_weather_agent(base_url: str, model_class: type[Any]) -> tuple[list[str], Any]:
    """An openai-agents agent with one function tool on `model_class` (Chat Completions or Responses) over the
    trained tool model, asked for the weather: the cities the tool was called with, and the final output."""
    set_tracing_disabled(True)
    cities: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """Get the weather for a city."""
        cities.append(city)
        return "sunny"

    weather.name = "get_weather"
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    agent = Agent(name="weather", instructions="You are a weather agent.", tools=[weather],
                  model=model_class(model=TOOLS_MODEL, openai_client=client),
                  model_settings=ModelSettings(temperature=0, max_tokens=60))
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    return cities, result.final_output


@pytest.mark.timeout(300)
def test_openai_agents_function_tool(stack: Stack) -> None:
    cities, output = run_weather_agent(stack.base_url, OpenAIChatCompletionsModel)
    assert cities and isinstance(output, str) and output
