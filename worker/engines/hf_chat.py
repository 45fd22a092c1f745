"""Chat on plain transformers: the fallback for machines or architectures vLLM cannot serve.

One sequence at a time (a lock), streamed token by token from `generate` running in a thread.
It honours max_tokens, temperature, top_p, stop, seed; anything else gets a 400 naming it.
"""

from __future__ import annotations

import asyncio
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

    def running(self) -> int:
        return self._running

    def check(self, params: GenerationParams) -> None:
        unsupported = {"presence_penalty": params.presence_penalty != 0,
                       "frequency_penalty": params.frequency_penalty != 0,
                       "logprobs": params.logprobs is not None, "response_format": params.json is not None}
        for name, used in unsupported.items():
            if used:
                raise InvalidRequest(f"'{name}' is not supported by the transformers chat engine",
                                     param=name, code="unsupported_parameter")

    def _start(self, prompt: list[int], params: GenerationParams, streamer: _Streamer, cancel: _Cancel) -> None:
        StoppingCriteriaList = hf_import("StoppingCriteriaList")

        sample = params.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": params.max_tokens}
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                stopping_criteria=StoppingCriteriaList([cancel]), **kwargs)

    async def generate(self, request_id: str, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        async with self._lock:
            self._running += 1
            try:
                async for delta in self._stream(prompt, params):
                    yield delta
            finally:
                self._running -= 1

    async def _stream(self, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        cancel = _Cancel()
        thread = asyncio.create_task(asyncio.to_thread(
            self._start, prompt, params, _Streamer(asyncio.get_running_loop(), queue), cancel))
        tokens: list[int] = []
        sent, unsent = "", 0
        try:
            while (token := await queue.get()) is not None:
                tokens.append(token)
                unsent += 1
                text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
                cut = min((i for s in params.stop if (i := text.find(s)) >= 0), default=-1)
                if cut >= 0:
                    yield Delta(text[len(sent):cut] if cut > len(sent) else "", unsent, None, "stop")
                    return
                if not text.endswith("\ufffd"):  # hold back half a multi-byte character
                    yield Delta(text[len(sent):], unsent)
                    sent, unsent = text, 0
            text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
            yield Delta(text[len(sent):], unsent, None, "length" if len(tokens) >= params.max_tokens else "stop")
        finally:
            cancel.event.set()
            await thread
