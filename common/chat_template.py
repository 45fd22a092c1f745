"""What a chat model's template can do, read from its folder: tools, think blocks, template switches, and
which of vLLM's tool-call and reasoning parsers reads its output.

vLLM serve needs `--tool-call-parser` and `--reasoning-parser` per model; a server of many models cannot ask
for flags, so the parsers are chosen here from the template's own markers (and the config's model type),
overridable per folder in `llm-interface.json` (`"options": {"tool_parser": ..., "reasoning_parser": ...}`,
null for none). Standard library only: the API reads this too.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import InvalidRequest

DEEPSEEK_CALLS = "<\uff5ctool\u2581calls\u2581begin\uff5c>"  # DeepSeek's full-width bars and low lines
TEMPLATE_SWITCHES = ("enable_thinking", "reasoning_effort", "thinking")

# (markers that must all appear in the template, parser), first match wins: the specific before the general.
TOOL_MARKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<tool_call>", "<function="), "qwen3_coder"),  # Qwen3-Coder: XML calls inside <tool_call>
    (("<tool_call>",), "hermes"),  # Hermes 2 Pro, Qwen2.5, Qwen3, QwQ
    (("[TOOL_CALLS]",), "mistral"),
    ((DEEPSEEK_CALLS, "```json"), "deepseek_v3"),
    ((DEEPSEEK_CALLS,), "deepseek_v31"),
    (("<|tool_calls_section_begin|>",), "kimi_k2"),
    (("<|python_start|>",), "llama4_pythonic"),
    (("<|python_tag|>",), "llama3_json"),
    (("<|eom_id|>",), "llama3_json"),
    (("<|tool_call|>",), "granite"),
    (("<|tool_call_start|>",), "lfm2"),
)
REASONING_BY_MODEL_TYPE = {"qwen3": "qwen3", "qwen3_moe": "qwen3", "qwen3_next": "qwen3", "deepseek_v3": "deepseek_r1",
                           "mistral": "mistral", "granite": "granite", "ernie4_5": "ernie45", "glm4_moe": "glm45"}


@dataclass(frozen=True)
class ChatFeatures:
    """A chat model's template features and the parsers chosen for its output."""

    tools: bool = False  # the template renders a `tools` list
    switches: tuple[str, ...] = ()  # chat_template_kwargs the template reads (enable_thinking, reasoning_effort)
    tool_parser: str | None = None
    reasoning_parser: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "switches": list(self.switches)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatFeatures:
        return cls(tools=bool(data.get("tools")), switches=tuple(str(s) for s in data.get("switches") or ()),
                   tool_parser=_opt(data.get("tool_parser")), reasoning_parser=_opt(data.get("reasoning_parser")))


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def read_templates(folder: Path) -> list[str]:
    """Every chat template the folder ships (chat_template.jinja, chat_template.json, tokenizer_config.json;
    named templates such as `tool_use` included)."""
    found: list[str] = []
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        found.append(jinja.read_text(encoding="utf-8", errors="replace"))
    found += _templates_in(_json_object(folder / "chat_template.json").get("chat_template"))
    found += _templates_in(_json_object(folder / "tokenizer_config.json").get("chat_template"))
    return [t for t in found if t]


def _templates_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        return [str(t.get("template") or "") for t in value if isinstance(t, dict)]
    return []


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}  # discovery reports broken files; here they just have no template
    return data if isinstance(data, dict) else {}


def tool_parser_for(template: str) -> str | None:
    """The vLLM tool-call parser for a template that renders tools, from its call markers."""
    if "tools" not in template:
        return None
    return next((parser for markers, parser in TOOL_MARKERS if all(m in template for m in markers)), None)


def reasoning_parser_for(template: str, model_type: str | None) -> str | None:
    """The vLLM reasoning parser for a template with think blocks."""
    if "[THINK]" in template:
        return "mistral"
    if "<think>" not in template:
        return None
    return REASONING_BY_MODEL_TYPE.get(model_type or "", "deepseek_r1")


def chat_features(folder: Path, config: dict[str, Any], options: dict[str, Any]) -> ChatFeatures | None:
    """The folder's chat features, or None when it ships no chat template."""
    templates = read_templates(folder)
    if not templates:
        return None
    text = "\n".join(templates)
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    tool_parser = options["tool_parser"] if "tool_parser" in options else tool_parser_for(text)
    reasoning = (options["reasoning_parser"] if "reasoning_parser" in options
                 else reasoning_parser_for(text, model_type))
    switches = tuple(s for s in TEMPLATE_SWITCHES if re.search(rf"\b{s}\b", text))
    return ChatFeatures(tools="tools" in text, switches=switches, tool_parser=_opt(tool_parser),
                        reasoning_parser=_opt(reasoning))


def template_kwargs(model: str, chat: ChatFeatures | None, kwargs: dict[str, Any] | None,
                    reasoning_effort: str | None) -> dict[str, Any]:
    """The `chat_template_kwargs` a request renders with: its own, plus `reasoning_effort` mapped onto the
    template's switch (passed as is where the template reads `reasoning_effort`; `enable_thinking` /
    `thinking` on or off where it has only that, "none" being off); a 400 when the template has no switch."""
    out = dict(kwargs or {})
    if reasoning_effort is None:
        return out
    switches = chat.switches if chat else ()
    if "reasoning_effort" in switches:
        out.setdefault("reasoning_effort", reasoning_effort)
    elif switch := next((s for s in ("enable_thinking", "thinking") if s in switches), None):
        out.setdefault(switch, reasoning_effort != "none")
    else:
        raise InvalidRequest(f"The chat template of '{model}' has no reasoning switch; 'reasoning_effort' cannot "
                             "be used with it", param="reasoning_effort", code="unsupported_parameter")
    return out
