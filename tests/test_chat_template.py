"""The parsers chosen per model from its chat template, and the template switches reasoning_effort maps onto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.chat_template import DEEPSEEK_CALLS, ChatFeatures, chat_features, template_kwargs
from common.discovery import scan_models
from common.errors import InvalidRequest
from tests.trained_models import QWEN3_THINK_TEMPLATE, QWEN25_TOOLS_TEMPLATE

# The markers of real templates (abridged to the parts that tell them apart).
QWEN3 = ("{%- if tools %}<tools>{{ tool | tojson }}</tools> <tool_call>\n{\"name\": ...}\n</tool_call>{%- endif %}"
         "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{%- endif %}")
QWEN3_CODER = "{%- if tools %}<tools>...</tools>{%- endif %}<tool_call>\n<function=name>\n<parameter=x>"
LLAMA31 = ("{%- if tools is not none %}Given the following functions, please respond with a JSON for a function call"
           "{{- '<|python_tag|>' }}{{- '<|eom_id|>' }}{%- endif %}")
MISTRAL = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{%- endif %}[TOOL_CALLS]"
DEEPSEEK_R1 = ("{%- if tools %}" + DEEPSEEK_CALLS + "function<｜tool▁sep｜>name\n```json\n{}\n```{%- endif %}"  # noqa: RUF001
               "<｜Assistant｜><think>\n")  # noqa: RUF001


@pytest.mark.parametrize(("template", "model_type", "tool", "reasoning"), [
    (QWEN25_TOOLS_TEMPLATE, "qwen2", "hermes", None),
    (QWEN3, "qwen3", "hermes", "qwen3"),
    (QWEN3_CODER, "qwen3_moe", "qwen3_coder", None),
    (LLAMA31, "llama", "llama3_json", None),
    (MISTRAL, "mistral", "mistral", None),
    (DEEPSEEK_R1, "qwen2", "deepseek_v3", "deepseek_r1"),
    (QWEN3_THINK_TEMPLATE, "qwen3", None, "qwen3"),
    ("{{ messages[0]['content'] }}", "qwen2", None, None),
])
def test_parsers_follow_the_template(tmp_path: Path, template: str, model_type: str, tool: str | None,
                                     reasoning: str | None) -> None:
    (tmp_path / "chat_template.jinja").write_text(template)
    features = chat_features(tmp_path, {"model_type": model_type}, {})
    assert features is not None
    assert (features.tool_parser, features.reasoning_parser) == (tool, reasoning)
    assert features.tools == ("tools" in template)


def test_the_folder_overrides_the_choice(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "default", "template": "{{ messages }}"}, {"name": "tool_use", "template": QWEN3}]}))
    assert chat_features(tmp_path, {"model_type": "qwen3"}, {}) == ChatFeatures(
        tools=True, switches=("enable_thinking",), tool_parser="hermes", reasoning_parser="qwen3")
    chosen = chat_features(tmp_path, {}, {"tool_parser": "pythonic", "reasoning_parser": None})
    assert chosen is not None and (chosen.tool_parser, chosen.reasoning_parser) == ("pythonic", None)
    assert chat_features(tmp_path / "missing", {}, {}) is None


def test_discovery_carries_the_features(models_dir: Path) -> None:
    catalog = scan_models(models_dir)
    tools = catalog.models["tiny-qwen25-tools"].chat
    assert tools is not None and tools.tool_parser == "hermes" and tools.tools
    think = catalog.models["tiny-qwen3-think"].chat
    assert think is not None and think.reasoning_parser == "qwen3" and think.switches == ("enable_thinking",)
    plain = catalog.models["tiny-qwen3-chat"].chat
    assert plain is not None and not plain.tools and plain.tool_parser is None
    assert catalog.models["all-minilm-l6-v2"].chat is None
    again = type(catalog.models["tiny-qwen3-think"]).from_dict(catalog.models["tiny-qwen3-think"].to_dict())
    assert again == catalog.models["tiny-qwen3-think"]


def test_reasoning_effort_maps_onto_the_switch() -> None:
    thinking = ChatFeatures(switches=("enable_thinking",))
    assert template_kwargs("m", thinking, None, "none") == {"enable_thinking": False}
    assert template_kwargs("m", thinking, None, "high") == {"enable_thinking": True}
    assert template_kwargs("m", thinking, {"enable_thinking": True}, "none") == {"enable_thinking": True}
    effort = ChatFeatures(switches=("reasoning_effort", "enable_thinking"))
    assert template_kwargs("m", effort, {"x": 1}, "low") == {"x": 1, "reasoning_effort": "low"}
    with pytest.raises(InvalidRequest) as info:
        template_kwargs("plain", ChatFeatures(), None, "low")
    assert info.value.param == "reasoning_effort" and "plain" in str(info.value)
