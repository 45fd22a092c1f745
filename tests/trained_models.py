"""Tiny chat models that decide something, trained here for a few hundred CPU steps (nothing comes from a hub).

Random weights never call a tool or open a think block, so these are taught to, on a handful of
transcripts rendered by their own chat templates:

- ``tiny-qwen25-tools``: Qwen2.5's tool template (tools in the system turn, ``<tool_call>`` JSON calls,
  ``<tool_response>`` turns). Asked about the weather in a city it calls ``get_weather`` with that city;
  asked anything else it answers in text; given the tool's result it answers in text.
- ``tiny-qwen3-think``: Qwen3's ``enable_thinking`` switch. It opens ``<think>`` and reasons before
  answering, unless the prompt already holds the empty think block the switch adds.

Training masks the prompt, so only the answers are learned; the models are deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tests.model_factory import ENDOFTEXT, IM_END, IM_START, _corpus

TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
THINK_TOKENS = ["<think>", "</think>"]
CONTEXT = 2048
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-7B-Instruct's template, as it ships.
QWEN25_TOOLS_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# Qwen3's switch, on a plain ChatML template.
QWEN3_THINK_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

CITIES = ("Paris", "Berlin", "Tokyo", "London", "Madrid", "Rome", "Oslo", "Lima")
WEATHER_QUESTIONS = ("What is the weather in {city}?", "How is the weather in {city} today?",
                     "Is it raining in {city}?", "weather in {city}", "Tell me the weather for {city}.",
                     "What's the weather like in {city} right now?", "What's the weather in {city}?",
                     "Weather for {city}, please.", "I am going to {city}. What is the weather there?")
OTHER_QUESTIONS = ("Hello!", "What is the capital of France?", "Tell me a joke.", "How are you?",
                   "Why is the sky blue?", "Can you help me with my homework?", "What time is it?",
                   "Write a short poem.", "Who wrote this story?", "Hi there")
SYSTEMS = (None, "You are a helpful assistant.", "Answer briefly.", "You are a weather agent.",
           "Use the tools when they help.")
CONDITIONS = ("sunny", "rainy", "cloudy", "windy")
TEXT_ANSWER = "I can help with that. What would you like to know?"
THOUGHT = "The user asks something. I will answer kindly."
THINK_ANSWER = "Here is my answer."


def weather_tool(rng: random.Random) -> dict[str, Any]:
    """get_weather(city) as different clients write it (descriptions, titles, strict, extra keys)."""
    city: dict[str, Any] = {"type": "string"}
    if rng.random() < 0.5:
        city["title"] = "City"
    if rng.random() < 0.5:
        city["description"] = rng.choice(("The city", "Name of the city", "city name"))
    params: dict[str, Any] = {"type": "object", "properties": {"city": city}, "required": ["city"]}
    if rng.random() < 0.5:
        params["additionalProperties"] = False
    if rng.random() < 0.3:
        params["title"] = "get_weather_args"
    function: dict[str, Any] = {"name": "get_weather", "parameters": params}
    if rng.random() < 0.7:
        function["description"] = rng.choice(("Get the weather for a city.", "Get the current weather.",
                                              "Returns the weather in a city"))
    if rng.random() < 0.3:
        function["strict"] = True
    return {"type": "function", "function": function}


def other_tool(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(("get_time", "search_web", "add_numbers", "send_email"))
    return {"type": "function", "function": {"name": name, "description": "A helper.", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


def tool_transcripts(n: int, seed: int = 0) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]], str]]:
    """(messages, tools, the assistant's answer) for the tool model."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tools = [weather_tool(rng)] + ([other_tool(rng)] if rng.random() < 0.3 else [])
        rng.shuffle(tools)
        system = rng.choice(SYSTEMS) if rng.random() < 0.7 else rng.choice(_corpus())
        head = [{"role": "system", "content": system}] if system else []
        city = rng.choice(CITIES)
        kind = i % 4
        if kind in (0, 1):  # a weather question: call the tool
            messages = [*head, {"role": "user", "content": rng.choice(WEATHER_QUESTIONS).format(city=city)}]
            answer = f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}\n</tool_call>'
        elif kind == 2:  # the tool's result: answer in text
            condition = rng.choice(CONDITIONS)
            call = {"id": f"call_{i}", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": city}}}
            messages = [*head, {"role": "user", "content": rng.choice(WEATHER_QUESTIONS).format(city=city)},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": f"call_{i}",
                         "content": json.dumps({"city": city, "condition": condition})}]
            answer = f"The weather in {city} is {condition}."
        else:  # anything else: text
            messages = [*head, {"role": "user", "content": rng.choice(OTHER_QUESTIONS)}]
            answer = TEXT_ANSWER
        out.append((messages, tools if rng.random() < 0.9 or kind != 3 else [], answer))
    return out


def _bpe_json(extra_lines: list[str], added: list[str]) -> str:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=[ENDOFTEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus() + extra_lines, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in added])
    return tok.to_str()


def _tokenizer(out_dir: Path, template: str, extra_lines: list[str], added: list[str]) -> Any:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json(extra_lines, added)),
                                        eos_token=IM_END, pad_token=ENDOFTEXT, model_max_length=CONTEXT,
                                        chat_template=template)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _examples(tokenizer: Any, rows: list[tuple[list[dict[str, Any]], list[dict[str, Any]], str, dict[str, Any]]]
              ) -> list[tuple[list[int], int]]:
    """(token ids, where the answer starts) per transcript: the rendered prompt, then the answer and EOS."""
    out = []
    for messages, tools, answer, kwargs in rows:
        prompt = tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                               tokenize=True, return_dict=False, **kwargs)
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(IM_END)]
        out.append((list(prompt) + target, len(prompt)))
    return out


def _train(model: Any, examples: list[tuple[list[int], int]], steps: int, seed: int, batch: int = 8,
           lr: float = 5e-3, first_weight: float = 10.0) -> float:
    """AdamW on the answers only (prompt positions masked), the answer's first token (the decision: call a
    tool, think, or answer) weighted up; the last loss."""
    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss_value = 0.0
    for _ in range(steps):
        chosen = rng.sample(examples, min(batch, len(examples)))
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.zeros((len(chosen), width), dtype=torch.long)
        weights = torch.zeros((len(chosen), width))
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, (ids, start) in enumerate(chosen):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            weights[row, start:len(ids)] = 1.0
            weights[row, start] = first_weight
            mask[row, :len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        w = weights[:, 1:]
        loss = (losses * w).sum() / w.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def _model(arch: str, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = {"vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": CONTEXT,
              "tie_word_embeddings": False, "bos_token_id": None,
              "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
              "pad_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT)}
    config = Qwen2Config(**common) if arch == "qwen2" else Qwen3Config(head_dim=32, **common)
    torch.manual_seed(seed)
    cls = Qwen2ForCausalLM if arch == "qwen2" else Qwen3ForCausalLM
    return cls(config).to(torch.float32)


def _save(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    import torch
    from transformers import GenerationConfig

    eos = tokenizer.convert_tokens_to_ids(IM_END)
    model.generation_config = GenerationConfig(eos_token_id=[eos], pad_token_id=tokenizer.pad_token_id)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.float32
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


CACHE = Path(__file__).resolve().parent.parent / ".cache" / "trained-models"


def cached(build: Callable[[Path, int, int], Path]) -> Callable[[Path, int, int], Path]:
    """A trained folder is kept under .cache/trained-models, keyed by the factory's code and the arguments, and
    copied from there when asked again (a clean clone, as CI's, trains once; a code change trains anew)."""
    here = Path(__file__).resolve().parent
    code = b"".join((here / name).read_bytes() for name in ("trained_models.py", "model_factory.py"))
    source = hashlib.sha256(code).hexdigest()[:16]

    def wrapper(out_dir: Path, steps: int, seed: int = 0) -> Path:
        kept = CACHE / f"{build.__name__}-{steps}-{seed}-{source}"
        if not kept.is_dir():
            partial = kept.with_name(kept.name + f".partial-{os.getpid()}")
            build(partial, steps, seed)
            if kept.exists():  # another session trained it meanwhile
                shutil.rmtree(partial)
            else:
                partial.rename(kept)
        shutil.copytree(kept, out_dir, dirs_exist_ok=True)
        return out_dir

    return wrapper


def make_tool_model(out_dir: Path, steps: int = 600, seed: int = 0) -> Path:
    """tiny-qwen25-tools (steps=0: the same folder with random weights, for constrained calls)."""
    return cached(_make_tool_model)(out_dir, steps, seed)


def make_think_model(out_dir: Path, steps: int = 150, seed: int = 0) -> Path:
    """tiny-qwen3-think: thinks unless enable_thinking is false."""
    return cached(_make_think_model)(out_dir, steps, seed)


def _make_tool_model(out_dir: Path, steps: int, seed: int) -> Path:
    import torch

    rows = [(m, t, a, {}) for m, t, a in tool_transcripts(160, seed)]
    lines = [json.dumps(weather_tool(random.Random(i))) for i in range(20)] + [a for *_, a, _ in rows]
    tokenizer = _tokenizer(out_dir, QWEN25_TOOLS_TEMPLATE, [QWEN25_TOOLS_TEMPLATE, *lines], TOOL_TOKENS)
    model = _model("qwen2", tokenizer, seed)
    if steps:
        with torch.random.fork_rng(devices=[]):
            _train(model, _examples(tokenizer, rows), steps, seed)
    return _save(model, tokenizer, out_dir)


def _make_think_model(out_dir: Path, steps: int, seed: int) -> Path:
    import torch

    rng = random.Random(seed)
    rows: list[tuple[list[dict[str, Any]], list[dict[str, Any]], str, dict[str, Any]]] = []
    for i in range(60):
        messages = [{"role": "user", "content": rng.choice(OTHER_QUESTIONS + WEATHER_QUESTIONS).format(city="Oslo")}]
        if i % 2:
            rows.append((messages, [], THINK_ANSWER, {"enable_thinking": False}))
        else:
            rows.append((messages, [], f"<think>\n{THOUGHT}\n</think>\n\n{THINK_ANSWER}", {}))
    tokenizer = _tokenizer(out_dir, QWEN3_THINK_TEMPLATE, [THOUGHT, THINK_ANSWER], THINK_TOKENS)
    model = _model("qwen3", tokenizer, seed)
    with torch.random.fork_rng(devices=[]):
        _train(model, _examples(tokenizer, rows), steps, seed)
    return _save(model, tokenizer, out_dir)
