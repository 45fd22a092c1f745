"""A generation as the Responses API answers it: the response object with its output items (reasoning, message,
function calls), and the stream of typed events (`response.created` ... `response.completed`), numbered."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from api.deltas import Choice
from api.doors.responses import ResponsesRequest
from api.doors.responses_store import ResponseStore
from api.schemas.chat import chat_logprobs
from common.errors import ServiceError


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def output_items(choice: Choice, top_logprobs: bool) -> list[dict[str, Any]]:
    """The choice as Responses output items: its reasoning, its text, then its function calls."""
    items: list[dict[str, Any]] = []
    if choice.reasoning:
        items.append(reasoning_item(new_id("rs"), choice.reasoning))
    calls = choice.calls()
    if choice.text or not calls:
        logprobs = (chat_logprobs(choice.logprobs) or {}).get("content") if top_logprobs else None
        items.append(message_item(new_id("msg"), choice.text, "completed", logprobs or []))
    items += [call_item(new_id("fc"), c["id"], c["function"]["name"], c["function"]["arguments"], "completed")
              for c in calls]
    return items


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(item_id: str, text: str | None, status: str, logprobs: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    content = [] if text is None else [text_part(text, logprobs)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def output_text(output: list[dict[str, Any]]) -> str:
    return "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages of the assistant turn."""
    text = output_text(output)
    reasoning = "".join(p["text"] for item in output if item["type"] == "reasoning" for p in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return [message]


class ResponseShape:
    """The response object of one request, before (`in_progress`) and after its generation."""

    def __init__(self, body: ResponsesRequest, response_id: str) -> None:
        self.body = body
        self.id = response_id
        self.created_at = int(time.time())

    def envelope(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                 incomplete: str | None = None) -> dict[str, Any]:
        b = self.body
        fmt = b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text else {"type": "text"}
        choice = b.tool_choice
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": None, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": b.model,
            "output": output, "output_text": output_text(output),
            "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": b.previous_response_id,
            "reasoning": {"effort": b.reasoning.effort if b.reasoning else None, "summary": None},
            "store": b.store, "temperature": 1.0 if b.temperature is None else b.temperature,
            "text": {"format": fmt}, "top_logprobs": b.top_logprobs,
            "tool_choice": choice.model_dump() if choice is not None and not isinstance(choice, str) else
            (choice or "auto"),
            "tools": [t.model_dump() for t in b.tools or []], "top_p": 1.0 if b.top_p is None else b.top_p,
            "truncation": "disabled", "usage": responses_usage(usage) if usage is not None else None,
            "user": None, "metadata": (b.model_extra or {}).get("metadata") or {},
        }

    def final(self, choices: list[Choice], usage: dict[str, Any], output: list[dict[str, Any]] | None = None
              ) -> dict[str, Any]:
        """The finished response; its output items built from the choice, or as they were streamed."""
        choice = choices[0] if choices else Choice(0)
        if output is None:
            output = output_items(choice, self.body.top_logprobs is not None)
        incomplete = "max_output_tokens" if choice.finish_reason == "length" else None
        return self.envelope("incomplete" if incomplete else "completed", output, usage, incomplete)


class ResponseEvents:
    """The Responses API's stream for one generation: items opened as their first delta comes (reasoning, the
    message, each function call), their deltas, each item closed when the next begins or the generation ends."""

    def __init__(self, shape: ResponseShape) -> None:
        self.shape = shape
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items as streamed, closed ones complete
        self.open: dict[str, Any] | None = None
        self.calls: dict[int, int] = {}  # tool call index -> output index

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> list[bytes]:
        response = self.shape.envelope("in_progress", [], None)
        return [self.event("response.created", response=response),
                self.event("response.in_progress", response=response)]

    def delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if delta.get("reasoning"):
            out += self._open("reasoning") + self._text_delta("response.reasoning_text.delta", delta["reasoning"])
        if delta.get("text"):
            out += self._open("message") + self._text_delta("response.output_text.delta", delta["text"])
        for call in delta.get("tool_calls") or ():
            out += self._call_delta(call)
        return out

    def _open(self, kind: str) -> list[bytes]:
        if self.open is not None and self.open["type"] == kind:
            return []
        out = self._close()
        item = (reasoning_item(new_id("rs"), "") if kind == "reasoning" else
                message_item(new_id("msg"), "", "in_progress"))
        self.open = item
        self.output.append(item)
        index = len(self.output) - 1
        out.append(self.event("response.output_item.added", output_index=index,
                              item={**item, "content": [] if kind == "message" else item["content"]}))
        if kind == "message":
            out.append(self.event("response.content_part.added", item_id=item["id"], output_index=index,
                                  content_index=0, part=text_part("")))
        return out

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        assert self.open is not None
        self.open["content"][0]["text"] += text
        extra: dict[str, Any] = {"logprobs": []} if kind == "response.output_text.delta" else {}
        return [self.event(kind, item_id=self.open["id"], output_index=len(self.output) - 1, content_index=0,
                           delta=text, **extra)]

    def _call_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        if call["index"] not in self.calls:
            out += self._close()
            item = call_item(new_id("fc"), call.get("id") or new_id("call"), function.get("name") or "", "",
                             "in_progress")
            self.open = item
            self.output.append(item)
            self.calls[call["index"]] = len(self.output) - 1
            out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item)))
        index = self.calls[call["index"]]
        item = self.output[index]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            out.append(self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                  delta=function["arguments"]))
        return out

    def _close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.output.index(item)
        out = []
        if item["type"] == "message":
            part = item["content"][0]
            out += [self.event("response.output_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=part["text"], logprobs=[]),
                    self.event("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part)]
        elif item["type"] == "reasoning":
            out.append(self.event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=item["content"][0]["text"]))
        else:
            out.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"]))
        item["status"] = "completed"
        if item["type"] == "reasoning":
            item.pop("status")
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def finish(self) -> list[bytes]:
        """Close what is open (nothing generated: still one empty message, as the whole answer has)."""
        out = self._close()
        if not self.output:
            out += self._open("message") + self._close()
        return out

    def completed(self, response: dict[str, Any]) -> list[bytes]:
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [self.event(kind, response=response)]

    def error(self, exc: ServiceError) -> list[bytes]:
        response = self.shape.envelope("failed", self.output, None)
        response["error"] = {"code": exc.code, "message": exc.message}
        return [self.event("error", code=exc.code, message=exc.message, param=exc.param),
                self.event("response.failed", response=response)]


class ResponsesDoor:
    """The Responses API over one chat generation (see `api.inference.Door`); `keep` stores it when asked."""

    def __init__(self, body: ResponsesRequest, response_id: str, store: ResponseStore,
                 conversation: list[dict[str, Any]]) -> None:
        self.shape = ResponseShape(body, response_id)
        self.events = ResponseEvents(self.shape)  # used only when streaming
        self.store = store
        self.conversation = conversation
        self.tail: list[bytes] = []

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]:
        if not self.shape.body.stream:
            return self.shape.final(choices, usage)
        self.tail = self.events.finish()
        return self.shape.final(choices, usage, self.events.output)

    def start_events(self) -> list[bytes]:
        return self.events.start()

    def delta_events(self, delta: dict[str, Any]) -> list[bytes]:
        return self.events.delta(delta)

    def end_events(self, response: dict[str, Any]) -> list[bytes]:
        return self.tail + self.events.completed(response)

    def error_events(self, exc: ServiceError) -> list[bytes]:
        return self.events.error(exc)

    async def keep(self, response: dict[str, Any]) -> None:
        if self.shape.body.store:
            await self.store.save(response, self.conversation + output_messages(response["output"]))
