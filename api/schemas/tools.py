"""Tools on `/v1/chat/completions`: function definitions, `tool_choice`, the calls in an assistant message, and
the checks OpenAI makes of them (each a 400 naming the parameter)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from common.chat_template import ChatFeatures
from common.errors import InvalidRequest

FUNCTION_NAME = r"^[a-zA-Z0-9_.:-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(pattern=FUNCTION_NAME)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: StrictStr


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    name: StrictStr
    arguments: StrictStr = ""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr
    type: Literal["function"] = "function"
    function: CalledFunction

    def wire(self) -> dict[str, Any]:
        """As chat templates take it: arguments as an object (vLLM's and transformers' convention); arguments
        that are not a JSON object become {} so that a bad turn in the history does not fail every later one."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.function.name, "arguments": arguments_object(self.function.arguments)}}


def arguments_object(text: str) -> dict[str, Any]:
    """A call's JSON arguments as an object; {} for text that is not a JSON object."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def check_parameters_schema(schema: dict[str, Any] | None, param: str) -> None:
    """A function's `parameters` must be a JSON Schema (checked against the metaschema where jsonschema is
    installed) describing an object."""
    if schema is None:
        return
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - the API image ships jsonschema
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"'{param}' is not a valid JSON Schema: {exc.message}", param=param,
                             code="invalid_tool_schema") from exc
    kind = schema.get("type")
    if kind is not None and kind != "object":
        raise InvalidRequest(f"'{param}' must describe an object (type 'object'), not {kind!r}", param=param,
                             code="invalid_tool_schema")


def check_tools(tools: list[ToolDefinition] | None, choice: ToolChoice | None) -> None:
    """Names unique, parameters real schemas, a named choice naming one of the tools."""
    names = [t.function.name for t in tools or []]
    for i, tool in enumerate(tools or []):
        if names.index(tool.function.name) != i:
            raise InvalidRequest(f"tools[{i}]: the function name '{tool.function.name}' is given twice",
                                 param=f"tools.{i}.function.name", code="duplicate_tool")
        check_parameters_schema(tool.function.parameters, f"tools.{i}.function.parameters")
    if choice is None or choice in ("none", "auto"):
        return
    if not names:
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(f"tool_choice names the function '{choice.function.name}', which is not in 'tools'",
                             param="tool_choice", code="unknown_tool")


def check_model_tools(model: str, chat: ChatFeatures | None, tools: list[ToolDefinition] | None,
                      choice: ToolChoice | None) -> None:
    """Tools need a template that renders them; a choice other than none needs a parser to read the calls."""
    if not tools or choice == "none":
        return
    if chat is None or not chat.tools:
        raise InvalidRequest(f"The model '{model}' has no tool support in its chat template; 'tools' cannot be used",
                             param="tools", code="tools_unsupported")
    if chat.tool_parser is None:
        raise InvalidRequest(
            f"No tool-call parser is known for the chat template of '{model}'; name one of vLLM's parsers as "
            "\"tool_parser\" in the folder's llm-interface.json options", param="tools", code="no_tool_parser")
