"""Chat on plain transformers: the fallback for machines or architectures vLLM cannot serve.

One sequence at a time (a lock), streamed token by token from `generate` running in a thread. vLLM's
sampling parameters map onto generate()'s (top_k, min_p, repetition_penalty, min_tokens, stop and EOS
tokens), penalties and logit_bias onto a logits processor of ours with vLLM's meaning, and grammars (JSON
modes, tool calls) onto xgrammar's processor, vLLM's own backend. Only logprobs, and a grammar that must
wait for a think block to end, get a 400.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import torch

from common.errors import InvalidRequest
from worker.engines.base import ParksModule, from_pretrained, hf_import, pick_device
from worker.engines.chat_base import ChatEngine, Delta, GenerationParams


class _Streamer:
    """transformers streamer -> asyncio queue of token ids (None marks the end)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[int | None]) -> None:
        self.loop, self.queue, self.first = loop, queue, True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # generate() first hands over the prompt
            self.first = False
            return
        for token in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, int(token))

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class _Cancel:
    """A stopping criterion the async side can trip."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TransformersChatEngine(ParksModule, ChatEngine):
    def load(self) -> None:
        AutoModelForCausalLM, AutoTokenizer = hf_import("AutoModelForCausalLM", "AutoTokenizer")

        self.device = pick_device(self.settings)
        dtype = torch.float32 if self.device == "cpu" else "auto"
        self.tokenizer = AutoTokenizer.from_pretrained(self.info.path, local_files_only=True)
        self.model = from_pretrained(
            AutoModelForCausalLM.from_pretrained, self.device, self.placement, pretrained_model_name_or_path=
            self.info.path, dtype=dtype, local_files_only=True, trust_remote_code=self.settings.trust_remote_code)
        self._lock = asyncio.Lock()
        self._running = 0
        self._compiler: Any = None  # xgrammar's, made on the first constrained request

    def running(self) -> int:
        return self._running

    def check(self, params: GenerationParams) -> None:
        unsupported = {"logprobs": params.logprobs is not None,
                       "response_format": params.structured is not None and params.reasoning_ended is False}
        for name, used in unsupported.items():
            if used:
                raise InvalidRequest(f"'{name}' is not supported by the transformers chat engine"
                                     + (" after a think block" if name == "response_format" else ""),
                                     param=name, code="unsupported_parameter")

    def _eos(self, params: GenerationParams) -> list[int]:
        """The tokens that end the sequence: the model's EOS (unless ignore_eos) and stop_token_ids."""
        configured = self.model.generation_config.eos_token_id
        eos = [] if params.ignore_eos else ([configured] if isinstance(configured, int) else list(configured or []))
        return [*eos, *params.stop_token_ids]

    def _processors(self, prompt_len: int, params: GenerationParams) -> list[Any]:
        processors: list[Any] = []
        if params.logit_bias or params.presence_penalty or params.frequency_penalty:
            processors.append(_Penalties(prompt_len, params))
        if params.structured is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            processors.append(LogitsProcessor(self._grammar(params.structured)))
        return processors

    def _grammar(self, structured: dict[str, Any]) -> Any:
        import xgrammar

        if self._compiler is None:
            info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._compiler = xgrammar.GrammarCompiler(info)
        if "structural_tag" in structured:
            return self._compiler.compile_structural_tag(structured["structural_tag"])
        if isinstance(structured.get("json"), dict):
            return self._compiler.compile_json_schema(json.dumps(structured["json"]), any_whitespace=False)
        return self._compiler.compile_builtin_json_grammar()

    def _start(self, prompt: list[int], params: GenerationParams, streamer: _Streamer, cancel: _Cancel) -> None:
        LogitsProcessorList, StoppingCriteriaList = hf_import("LogitsProcessorList", "StoppingCriteriaList")

        sample = params.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": params.max_tokens,
                                  "min_new_tokens": params.min_tokens or None, "eos_token_id": self._eos(params),
                                  "repetition_penalty": params.repetition_penalty}
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=max(params.top_k, 0),
                          min_p=params.min_p or None)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                logits_processor=LogitsProcessorList(self._processors(len(prompt), params)),
                                stopping_criteria=StoppingCriteriaList([cancel]), **kwargs)

    async def generate(self, request_id: str, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        async with self._lock:
            self._running += 1
            try:
                async for delta in self._stream(prompt, params):
                    yield delta
            finally:
                self._running -= 1

    def _decode(self, tokens: list[int], params: GenerationParams, eos: set[int]) -> str:
        """The text, without the token that ended it (vLLM leaves EOS and stop tokens out of the text)."""
        shown = tokens[:-1] if tokens and tokens[-1] in eos else tokens
        return str(self.tokenizer.decode(shown, skip_special_tokens=params.skip_special_tokens))

    async def _stream(self, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        cancel = _Cancel()
        thread = asyncio.create_task(asyncio.to_thread(
            self._start, prompt, params, _Streamer(asyncio.get_running_loop(), queue), cancel))
        eos = set(self._eos(params))
        tokens: list[int] = []
        sent, unsent = "", 0
        try:
            while (token := await queue.get()) is not None:
                tokens.append(token)
                unsent += 1
                text = self._decode(tokens, params, eos)
                cut, stop = min(((i, s) for s in params.stop if (i := text.find(s)) >= 0), default=(-1, None))
                if cut >= 0:
                    yield Delta(text[len(sent):cut] if cut > len(sent) else "", unsent, None, "stop",
                                tokens[len(tokens) - unsent:], stop_reason=stop)
                    return
                if not text.endswith("\ufffd"):  # hold back half a multi-byte character
                    yield Delta(text[len(sent):], unsent, None, None, tokens[len(tokens) - unsent:])
                    sent, unsent = text, 0
            text = self._decode(tokens, params, eos)
            ended = bool(tokens) and tokens[-1] in eos
            stop_id = tokens[-1] if ended and tokens[-1] in params.stop_token_ids else None
            yield Delta(text[len(sent):], unsent, None, "stop" if ended or len(tokens) < params.max_tokens else
                        "length", tokens[len(tokens) - unsent:] if unsent else [], stop_reason=stop_id)
        finally:
            cancel.event.set()
            await thread


class _Penalties:
    """vLLM's presence and frequency penalties (on the tokens generated so far) and OpenAI's logit_bias."""

    def __init__(self, prompt_len: int, params: GenerationParams) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, params.presence_penalty, params.frequency_penalty
        self.bias = params.logit_bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        if self.presence or self.frequency:
            generated = input_ids[:, self.prompt_len:]
            counts = torch.zeros_like(scores).scatter_add_(
                1, generated, torch.ones_like(generated, dtype=scores.dtype))
            scores -= self.frequency * counts + self.presence * (counts > 0).to(scores.dtype)
        for token, bias in self.bias.items():
            if token < scores.shape[-1]:
                scores[:, token] += bias
        return scores
