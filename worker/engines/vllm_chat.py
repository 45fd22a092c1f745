"""Chat on vLLM's async engine: continuous batching across every concurrent sequence."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from worker.engines.base import pick_device
from worker.engines.chat_base import ChatEngine, Delta, GenerationParams, TokenLogprob

log = logging.getLogger(__name__)

# vLLM on CPU takes all free RAM for its KV cache unless told otherwise.
_CPU_DEFAULT_KV_CACHE_GB = 1.0


def vllm_supports(architecture: str | None) -> bool:
    """vLLM is importable and knows this architecture."""
    try:
        from vllm import ModelRegistry
    except ImportError:
        return False
    return architecture is not None and architecture in ModelRegistry.get_supported_archs()


class VllmChatEngine(ChatEngine):
    def _engine_args(self) -> Any:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self.settings
        kv_gb = s.vllm_kv_cache_gb
        if kv_gb is None and pick_device(s) == "cpu":
            kv_gb = _CPU_DEFAULT_KV_CACHE_GB
        dtype: Any = s.vllm_dtype
        max_len: Any = s.vllm_max_model_len
        return AsyncEngineArgs(
            model=self.info.path, dtype=dtype, max_model_len=max_len,
            tensor_parallel_size=s.vllm_tensor_parallel_size, gpu_memory_utilization=s.gpu_memory_utilization,
            enforce_eager=s.vllm_enforce_eager, trust_remote_code=s.trust_remote_code, disable_log_stats=True,
            kv_cache_memory_bytes=int(kv_gb * 2**30) if kv_gb else None,
            cpu_offload_gb=self.placement.cpu_offload_gb if self.placement is not None else 0.0,
            enable_sleep_mode=self._can_sleep(),
            # JSON modes emit compact JSON: small models otherwise tend to pad with whitespace forever.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        )

    def _can_sleep(self) -> bool:
        """Parking is vLLM's sleep mode (level 1: weights to CPU memory, KV cache dropped): CUDA only, and
        not with weights already offloaded."""
        from vllm.platforms import current_platform

        offloaded = self.placement is not None and self.placement.offloaded
        return pick_device(self.settings) == "cuda" and current_platform.is_sleep_mode_available() and not offloaded

    async def park_async(self) -> bool:
        if not self.sleeps:
            return False
        await self.engine.sleep(level=1)
        return True

    async def wake_async(self) -> None:
        await self.engine.wake_up()

    def load(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        args = self._engine_args()
        self.sleeps = bool(args.enable_sleep_mode)
        self.engine = AsyncLLM.from_engine_args(args)

    def unload(self) -> None:
        self.engine.shutdown()
        del self.engine
        gc.collect()

    def running(self) -> int:
        return int(self.engine.get_num_unfinished_requests())

    def _sampling(self, params: GenerationParams) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if params.json is not None:
            schema = params.json.get("schema")
            structured = StructuredOutputsParams(json=schema, json_object=None if schema else True)
        return SamplingParams(
            n=1, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            stop=list(params.stop) or None, seed=params.seed, presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, logprobs=params.logprobs,
            structured_outputs=structured, output_kind=RequestOutputKind.DELTA)

    async def generate(self, request_id: str, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        stream = self.engine.generate({"prompt_token_ids": prompt}, self._sampling(params), request_id)
        finished = False
        try:
            async for output in stream:
                for out in output.outputs:
                    finished = out.finish_reason is not None
                    logprobs = _logprobs(out, params.logprobs or 0)
                    yield Delta(out.text, len(out.token_ids), logprobs, _finish(out.finish_reason))
        finally:
            if not finished:
                await self.engine.abort(request_id)


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


def _logprobs(out: Any, k: int) -> list[TokenLogprob] | None:
    """OpenAI's shape: the sampled token's logprob and the k most likely tokens at that step."""
    if out.logprobs is None:
        return None
    result = []
    for token_id, candidates in zip(out.token_ids, out.logprobs, strict=False):
        chosen = candidates[token_id]
        ranked = sorted(candidates.values(), key=lambda c: c.rank if c.rank is not None else 1 << 30)
        top = [(c.decoded_token or "", float(c.logprob)) for c in ranked[:k]]
        result.append(TokenLogprob(chosen.decoded_token or "", float(chosen.logprob), top))
    return result
