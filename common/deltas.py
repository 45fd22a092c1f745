"""Generation deltas as they cross the wire (`{"index", "text", "logprobs", "finish_reason"}` plus `reasoning`,
`tool_calls`, `stop_reason`): successive deltas of a choice joined into one, by the worker (one message per engine
step) and by the API (what queued while a stream's reader lagged: one SSE write)."""

from __future__ import annotations

from typing import Any


def merge_wire(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Successive wire deltas of the same choice joined into one (one chunk per choice per message)."""
    out: list[dict[str, Any]] = []
    for choice in choices:
        last = out[-1] if out else None
        if last is None or last["index"] != choice["index"] or last["finish_reason"] is not None:
            out.append(dict(choice))
            continue
        last["text"] += choice["text"]
        if choice.get("reasoning"):
            last["reasoning"] = (last.get("reasoning") or "") + choice["reasoning"]
        if choice["logprobs"] is not None:
            last["logprobs"] = (last["logprobs"] or []) + choice["logprobs"]
        last["tool_calls"] = _merge_calls(last.get("tool_calls") or [], choice.get("tool_calls") or [])
        if not last["tool_calls"]:
            del last["tool_calls"]
        last["finish_reason"] = choice["finish_reason"]
        if "stop_reason" in choice:
            last["stop_reason"] = choice["stop_reason"]
    return out


def _merge_calls(calls: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = [dict(c, function=dict(c["function"])) for c in calls]
    for call in more:
        if merged and merged[-1]["index"] == call["index"]:
            function = merged[-1]["function"]
            for key, value in call["function"].items():
                function[key] = function.get(key, "") + value
        else:
            merged.append(dict(call, function=dict(call["function"])))
    return merged
