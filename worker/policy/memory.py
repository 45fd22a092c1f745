"""What one resident model costs in device memory, part by part. Pure estimates from config.json numbers.

A model's budget is its weights (the part kept on the GPU), its KV cache (chat), an activation workspace
(the peak of one forward pass at the batch size the engine is held to) and the CUDA context of an engine
that runs in a process of its own (vLLM's engine core). The formulas are deliberately simple upper
bounds; `bench/gpu_check.py` compares them with what a GPU really shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.discovery import ModelInfo, ModelShape

MIB = 1024**2
GIB = 1024**3
KV_BLOCK_TOKENS = 16  # vLLM's KV block: contexts are planned in whole blocks
DEFAULT_MAX_MODEL_LEN = 16384  # the context a chat model gets unless LLM_VLLM_MAX_MODEL_LEN says otherwise
KV_TOKENS_FLOOR = 16384  # KV room of at least this many tokens, so short chats run side by side
ENGINE_CONTEXT_BYTES = 512 * MIB  # CUDA context and non-torch memory of a vLLM engine process
CUDA_GRAPH_BYTES = 256 * MIB  # vLLM's captured CUDA graphs (not with enforce_eager)
ACTIVATION_FLOOR_BYTES = 64 * MIB
FALLBACK_KV_BYTES = GIB  # a chat model whose config states no shape

DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "double": 8,
    "float32": 4, "float": 4, "fp32": 4,
    "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
    "int8": 1, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1,
}


class PlanError(ValueError):
    """The settings ask for something the model cannot be given (the message names the numbers)."""


@dataclass(frozen=True)
class KvPlan:
    bytes: int
    max_model_len: int
    tokens: int  # tokens the cache holds (all sequences together)


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def dtype_bytes(name: str | None) -> int | None:
    return DTYPE_BYTES.get((name or "").lower())


def compute_dtype_bytes(model: ModelInfo, configured: str, on_gpu: bool) -> int:
    """Bytes per value of activations and KV cache: the load dtype. Quantized kernels compute in 16 bits;
    "auto" means 16 bits on a GPU, and on a CPU up to 32 (a CPU without bf16 support computes in fp32)."""
    if model.quantization is not None:
        return 2
    chosen = dtype_bytes(configured)
    if chosen is not None:
        return chosen
    return min(dtype_bytes(model.dtype) or 2, 2) if on_gpu else 4


def window(model: ModelInfo) -> int:
    """The context window the model was trained for (what `ChatInputs` assumes too)."""
    return model.max_length or 2048


def plan_kv(model: ModelInfo, value_bytes: int, *, kv_cache_gb: float | None,
            max_model_len: int | None) -> KvPlan:
    """The KV cache of a chat model and the context it allows.

    Default: room for the context (the model's window, at most ``DEFAULT_MAX_MODEL_LEN`` unless
    ``max_model_len`` asks for more) and for at least ``KV_TOKENS_FLOOR`` tokens in all. A fixed
    ``kv_cache_gb`` fits the context to the cache instead (up to the window); a ``max_model_len`` that
    cannot fit in it is a ``PlanError`` naming both numbers and the settings."""
    context = min(window(model), max_model_len or DEFAULT_MAX_MODEL_LEN)
    if model.shape is None:
        kv = int(kv_cache_gb * GIB) if kv_cache_gb else FALLBACK_KV_BYTES
        return KvPlan(kv, context, 0)
    per_token = model.shape.kv_bytes_per_token(value_bytes)
    if kv_cache_gb is None:
        tokens = round_up(max(context, KV_TOKENS_FLOOR), KV_BLOCK_TOKENS)
        return KvPlan(tokens * per_token, context, tokens)
    kv = int(kv_cache_gb * GIB)
    tokens = kv // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
    context = min(window(model), max_model_len or window(model))  # a fixed cache: as much as it holds
    if max_model_len is not None and tokens < context:
        need = round_up(context, KV_BLOCK_TOKENS) * per_token
        raise PlanError(
            f"model '{model.id}': a context of {context} tokens needs {need / GIB:.2f} GiB of KV cache "
            f"({per_token} bytes a token), but LLM_VLLM_KV_CACHE_GB is {kv_cache_gb:g}; raise "
            f"LLM_VLLM_KV_CACHE_GB to at least {need / GIB:.2f} or lower LLM_VLLM_MAX_MODEL_LEN")
    if tokens < KV_BLOCK_TOKENS:
        raise PlanError(f"model '{model.id}': LLM_VLLM_KV_CACHE_GB={kv_cache_gb:g} holds no KV block "
                        f"({per_token * KV_BLOCK_TOKENS} bytes); raise it")
    return KvPlan(kv, min(context, tokens), tokens)


def activation_bytes(shape: ModelShape | None, tokens: int, value_bytes: int, logits_rows: int = 0) -> int:
    """Peak transient memory of one forward pass over ``tokens`` tokens: the hidden states and attention
    projections (about 4 x hidden per token), the MLP's gate, up and product (3 x intermediate), and
    ``logits_rows`` rows of float32 logits with their sampling copies."""
    if shape is None:
        return ACTIVATION_FLOOR_BYTES * 4
    per_token = (4 * shape.hidden + 3 * shape.intermediate) * value_bytes
    logits = logits_rows * shape.vocab * 4 * 2
    return max(tokens * per_token + logits, ACTIVATION_FLOOR_BYTES)
