"""Chat on vLLM's engine (in vLLM's own process, or in this one): continuous batching across every concurrent
sequence."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from common.discovery import ModelInfo
from common.errors import EngineFailure, InvalidRequest
from common.settings import Settings
from worker.engines import vllm_cpu_kernels
from worker.engines.base import TRANSFORMERS_IMPORT, collect_garbage_sometimes, free_memory, pick_device
from worker.engines.chat_base import ChatEngine, Delta, GenerationParams, TokenLogprob
from worker.engines.vllm_handover import HandoverEngine
from worker.engines.vllm_inprocess import InProcessEngine
from worker.policy.planner import Placement, PlannerParams, plan_placements, vllm_start_check

log = logging.getLogger(__name__)


def vllm_supports(architecture: str | None) -> bool:
    """vLLM is importable and knows this architecture."""
    try:
        from vllm import ModelRegistry
    except ImportError:
        return False
    return architecture is not None and architecture in ModelRegistry.get_supported_archs()


def load_dtype(info: ModelInfo, configured: str) -> str:
    """The dtype vLLM loads with: LLM_VLLM_DTYPE, except that quantized checkpoints keep theirs ("auto"):
    their kernels only compute in 16 bits."""
    if info.quantization is not None and configured in ("float32", "float", "fp32"):
        log.info("%s is %s-quantized: loading it in its own dtype, not %s", info.id, info.quantization, configured)
        return "auto"
    return configured


def on_cpu(settings: Settings) -> bool:
    return pick_device(settings) == "cpu"


def enforce_eager(settings: Settings) -> bool:
    """LLM_VLLM_ENFORCE_EAGER; unset, eager on a CPU (compiling costs 18-31 s at every cold load there, for
    about 20% more speed) and compiled on a GPU (with CUDA graphs)."""
    return on_cpu(settings) if settings.vllm_enforce_eager is None else settings.vllm_enforce_eager


def in_process(settings: Settings) -> bool:
    """LLM_VLLM_IN_PROCESS; unset, in this process on a CPU (starts in seconds, where vLLM's own processes
    take 25 s and more) and in vLLM's engine process on a GPU."""
    return on_cpu(settings) if settings.vllm_in_process is None else settings.vllm_in_process


def use_cache_dir(settings: Settings) -> None:
    """vLLM's caches (compiled graphs among them) under LLM_DATA_DIR, so a model's second cold load reuses what
    its first compiled; a VLLM_CACHE_ROOT of the environment wins."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str((settings.data_dir / "vllm-cache").resolve()))


def engine_args(info: ModelInfo, settings: Settings, placement: Placement | None, sleep: bool = False) -> Any:
    """vLLM's `AsyncEngineArgs` for a model, from the plan's budget for it (`Placement.engine_args`: the KV
    cache, context, sequences, offload and its own share of the card), never from the global settings."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    if placement is None:  # outside the scheduler (benchmarks): the plan it would have made on this device
        placement = plan_placements([info], None, PlannerParams.from_settings(settings))[info.id]
    if placement.error:
        raise EngineFailure(placement.error, code="model_load_failed")
    planned = dict(placement.engine_args)
    util = planned.pop("gpu_memory_utilization", None)
    extra: dict[str, Any] = {} if util is None else {"gpu_memory_utilization": util}
    if (kernels := vllm_cpu_kernels.priority()) is not None:  # on a CPU: vLLM's C++ RMSNorm kernels
        extra["ir_op_priority"] = kernels
    dtype: Any = load_dtype(info, settings.vllm_dtype)
    return AsyncEngineArgs(
        model=info.path, dtype=dtype, tensor_parallel_size=settings.vllm_tensor_parallel_size,
        enforce_eager=enforce_eager(settings), trust_remote_code=settings.trust_remote_code,
        disable_log_stats=True, enable_sleep_mode=sleep, **planned,
        **extra,
        # JSON modes emit compact JSON: small models otherwise tend to pad with whitespace forever. The
        # reasoning parser lets a grammar wait until the think block has ended.
        structured_outputs_config=StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=True,
            reasoning_parser=(info.chat.reasoning_parser if info.chat else None) or ""),
    )


class VllmChatEngine(ChatEngine):
    def _preflight(self) -> None:
        """On a GPU, vLLM's start-up test before vLLM makes it: a refusal names the numbers, not a dead
        engine process. (The plan keeps room for every resident model; this catches other processes.)"""
        if self.placement is None or self.placement.device != "cuda":
            return
        import torch

        free, total = torch.cuda.mem_get_info()
        problem = vllm_start_check(self.placement, int(free), int(total))
        if problem is not None:
            raise EngineFailure(f"{problem}; lower LLM_GPU_MEMORY_UTILIZATION or free GPU memory",
                                code="model_load_failed")

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

    @classmethod
    def warm_up(cls, models: Sequence[ModelInfo], settings: Settings) -> None:
        """vLLM's engine modules take 7-10 s to import on a small CPU, more than the engine's start; and vLLM
        inspects each architecture's class in a subprocess (about 10 s here) unless its cache under
        VLLM_CACHE_ROOT has it (outside the import lock: an embedding load need not wait for that)."""
        with TRANSFORMERS_IMPORT:
            import vllm.engine.arg_utils
            import vllm.v1.engine.async_llm
            import vllm.v1.engine.llm_engine  # noqa: F401
            from vllm import ModelRegistry

        use_cache_dir(settings)
        for architecture in sorted({m.architecture for m in models if m.architecture}):
            ModelRegistry._try_inspect_model_cls(architecture)  # cached on disk from then on

    def load(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        use_cache_dir(self.settings)
        args = engine_args(self.info, self.settings, self.placement, sleep=self._can_sleep())
        self._preflight()
        self.sleeps = bool(args.enable_sleep_mode)
        try:
            if not in_process(self.settings):
                self.engine: Any = AsyncLLM.from_engine_args(args)
            elif self.settings.vllm_handover_after_s > 0:
                self.engine = HandoverEngine(InProcessEngine(args, self.info.id), self._start_processes,
                                             self.settings.vllm_handover_after_s, self.info.id)
            else:
                self.engine = InProcessEngine(args, self.info.id)
        except Exception as exc:  # vLLM's reason is in its message (or, multi-process, in the log before it)
            raise EngineFailure(f"vLLM refused to start: {type(exc).__name__}: {exc}",
                                code="model_load_failed") from exc

    def _start_processes(self) -> Any:
        """vLLM's `AsyncLLM` for this model (its engine in a process of its own), for a handover."""
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(engine_args(self.info, self.settings, self.placement))

    def unload(self) -> None:
        """The engine's shutdown releases its weights and KV cache (in this process: by hand, see
        `vllm_inprocess._teardown`); on a GPU, what its other device buffers hold goes back at once."""
        self.engine.shutdown()
        del self.engine
        if on_cpu(self.settings):
            collect_garbage_sometimes()
        else:
            free_memory("cuda")

    def running(self) -> int:
        return int(self.engine.get_num_unfinished_requests())

    def _sampling(self, params: GenerationParams) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None if params.structured is None else StructuredOutputsParams(**params.structured)
        return SamplingParams(
            n=1, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            stop=list(params.stop) or None, seed=params.seed, presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, logprobs=params.logprobs, top_k=params.top_k,
            min_p=params.min_p, repetition_penalty=params.repetition_penalty, min_tokens=params.min_tokens,
            ignore_eos=params.ignore_eos, stop_token_ids=list(params.stop_token_ids) or None,
            skip_special_tokens=params.skip_special_tokens, logit_bias=params.logit_bias or None,
            structured_outputs=structured, output_kind=RequestOutputKind.DELTA)

    async def generate(self, request_id: str, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        from vllm.exceptions import VLLMValidationError

        try:
            sampling = self._sampling(params)
        except ValueError as exc:  # SamplingParams' own checks
            raise InvalidRequest(f"the engine refused the request: {exc}", code="invalid_request") from exc
        stream = self.engine.generate({"prompt_token_ids": prompt}, sampling, request_id,
                                      reasoning_ended=params.reasoning_ended)
        finished = False
        try:
            try:
                output = await anext(stream)
            except (ValueError, TypeError, VLLMValidationError) as exc:  # vLLM's input checks: the request is at fault
                raise InvalidRequest(f"the engine refused the request: {exc}", code="invalid_request") from exc
            except StopAsyncIteration:
                return
            while True:
                for out in output.outputs:
                    finished = out.finish_reason is not None
                    yield Delta(out.text, len(out.token_ids), _logprobs(out, params.logprobs or 0),
                                _finish(out.finish_reason), list(out.token_ids), stop_reason=out.stop_reason)
                try:
                    output = await anext(stream)
                except StopAsyncIteration:
                    return
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
