"""The memory plan, a pure function of the models, the card and the settings: placement, each model's budget
(weights, KV cache, activations, CUDA context) and the vLLM arguments derived from it, checked against vLLM's
own start-up test in every order the models can load in."""

from __future__ import annotations

import itertools

import pytest

from common.discovery import ModelInfo, ModelShape
from common.protocol import ModelType
from common.settings import Settings
from worker.policy.memory import ENGINE_CONTEXT_BYTES, KV_TOKENS_FLOOR, PlanError, plan_kv
from worker.policy.planner import (
    GIB,
    MIN_GPU_SHARE,
    GpuInfo,
    Placement,
    PlannerParams,
    footprint_bytes,
    gpu_budget_bytes,
    plan_placements,
    vllm_start_check,
    weight_bytes,
)

# Weights only: the sizes in these tests are the sizes planned.
BARE = PlannerParams(weight_overhead=0.0, overheads=False)

# The real configs' numbers (Qwen2.5-7B-Instruct-AWQ, Qwen3-Embedding-0.6B, Qwen3-Reranker-0.6B).
QWEN25_7B = ModelShape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064)
QWEN3_06B = ModelShape(layers=28, hidden=1024, intermediate=3072, heads=16, kv_heads=8, head_dim=128, vocab=151669)


def model(model_id: str, model_type: ModelType, size_gb: float, dtype: str | None = "bfloat16",
          shape: ModelShape | None = None, quantization: str | None = None, window: int | None = 32768) -> ModelInfo:
    return ModelInfo(id=model_id, type=model_type, path=f"/models/{model_id}", size_bytes=int(size_gb * GIB),
                     dtype=dtype, architecture=None, max_length=window, has_chat_template=False, shape=shape,
                     quantization=quantization)


SEED = [model("qwen-7b", ModelType.CHAT, 7.0), model("bge-m3", ModelType.EMBEDDING, 1.1),
        model("bge-reranker", ModelType.RERANKER, 1.1)]
# The seed's example as the folders really are: 5.2 GiB of AWQ weights, two 1.1 GiB bf16 models.
SEED_REAL = [
    model("Qwen2.5-7B-Instruct-AWQ", ModelType.CHAT, 5.2, "float16", QWEN25_7B, quantization="awq"),
    model("Qwen3-Embedding-0.6B", ModelType.EMBEDDING, 1.11, "bfloat16", QWEN3_06B),
    model("Qwen3-Reranker-0.6B", ModelType.RERANKER, 1.11, "bfloat16", QWEN3_06B),
]


def card(total_gb: float) -> GpuInfo:
    return GpuInfo.simulated(total_gb)


# ---- placement (weights only) ----

def test_seed_plan_big_model_offloaded_small_ones_on_the_gpu() -> None:
    gpu = GpuInfo(8 * GIB, 8 * GIB)
    plan = plan_placements(SEED, gpu, PlannerParams(available_gpu_memory_gb=8.0, weight_overhead=0.0, overheads=False))
    big, emb, rr = plan["qwen-7b"], plan["bge-m3"], plan["bge-reranker"]
    assert big.device == "cuda" and big.offloaded and big.cpu_offload_bytes > 0
    for small in (emb, rr):
        assert small.device == "cuda" and not small.offloaded and small.gpu_bytes == int(1.1 * GIB)
    assert big.gpu_bytes + emb.gpu_bytes + rr.gpu_bytes <= 8 * GIB
    assert big.gpu_bytes + big.cpu_offload_bytes == 7 * GIB
    assert big.gpu_bytes == 8 * GIB - 2 * int(1.1 * GIB)
    assert big.cpu_offload_gb == pytest.approx(1.2, abs=1e-6)
    assert big.max_memory() == {0: big.gpu_bytes, "cpu": big.cpu_offload_bytes}
    assert emb.max_memory() is None


def test_no_gpu_places_everything_on_cpu() -> None:
    plan = plan_placements(SEED, None, PlannerParams())
    assert {p.device for p in plan.values()} == {"cpu"}
    assert all(p.gpu_bytes == 0 and p.cpu_offload_bytes == 0 for p in plan.values())
    assert plan["qwen-7b"].weight_bytes == int(7 * GIB * 1.05)


def test_offload_disabled_keeps_big_models_whole_on_the_gpu() -> None:
    gpu = GpuInfo(8 * GIB, 8 * GIB)
    plan = plan_placements(SEED, gpu, PlannerParams(enable_offload=False, available_gpu_memory_gb=8.0,
                                                    weight_overhead=0.0, overheads=False))
    assert not any(p.offloaded for p in plan.values())
    assert plan["qwen-7b"].gpu_bytes == 7 * GIB


def test_a_big_model_that_fits_next_to_the_small_ones_is_not_offloaded() -> None:
    plan = plan_placements(SEED, GpuInfo(16 * GIB, 16 * GIB), PlannerParams(available_gpu_memory_gb=16,
                                                                            weight_overhead=0.0, overheads=False))
    assert not plan["qwen-7b"].offloaded and plan["qwen-7b"].gpu_bytes == 7 * GIB


def test_room_is_kept_per_type_slot() -> None:
    """Two small embedding models with one slot: only the larger one is reserved."""
    models = [SEED[0], model("e1", ModelType.EMBEDDING, 1.0), model("e2", ModelType.EMBEDDING, 2.0)]
    gpu = GpuInfo(8 * GIB, 8 * GIB)
    one_slot = PlannerParams(available_gpu_memory_gb=8.0, weight_overhead=0.0, overheads=False)
    assert plan_placements(models, gpu, one_slot)["qwen-7b"].gpu_bytes == 6 * GIB
    two_slots = PlannerParams(available_gpu_memory_gb=8.0, weight_overhead=0.0, overheads=False, model_cache_size=2)
    assert plan_placements(models, gpu, two_slots)["qwen-7b"].gpu_bytes == 5 * GIB


def test_an_offloaded_model_keeps_a_minimum_share_of_the_gpu() -> None:
    models = [SEED[0], model("e", ModelType.EMBEDDING, 3.9), model("r", ModelType.RERANKER, 3.9)]
    big = plan_placements(models, GpuInfo(8 * GIB, 8 * GIB), PlannerParams(
        available_gpu_memory_gb=8.0, weight_overhead=0.0, overheads=False))["qwen-7b"]
    assert big.gpu_bytes == int(8 * GIB * MIN_GPU_SHARE)


def test_a_small_model_larger_than_the_whole_budget_is_offloaded() -> None:
    plan = plan_placements([model("e", ModelType.EMBEDDING, 3.0)], GpuInfo(2 * GIB, 2 * GIB), BARE)
    assert plan["e"].gpu_bytes == int(2 * GIB * 0.9)
    assert plan["e"].gpu_bytes + plan["e"].cpu_offload_bytes == 3 * GIB


def test_resident_size_follows_the_load_dtype_but_never_for_quantized_weights() -> None:
    fp32_chat = model("c", ModelType.CHAT, 4.0, dtype="float32")
    assert weight_bytes(fp32_chat, PlannerParams(chat_dtype="bfloat16")) == 2 * GIB
    assert weight_bytes(fp32_chat, PlannerParams(chat_dtype="auto")) == 4 * GIB
    assert weight_bytes(model("x", ModelType.CHAT, 4.0, dtype=None), PlannerParams(chat_dtype="float16")) == 4 * GIB
    awq = model("q", ModelType.CHAT, 5.2, dtype="float16", shape=QWEN25_7B, quantization="awq")
    assert weight_bytes(awq, PlannerParams(chat_dtype="float32")) == int(5.2 * GIB)  # not doubled
    # and its KV cache is planned in 16 bits, whatever LLM_VLLM_DTYPE says
    assert footprint_bytes(awq, PlannerParams(chat_dtype="float32")) == footprint_bytes(awq, PlannerParams())


def test_budget_from_settings_or_measured_free_memory() -> None:
    assert gpu_budget_bytes(PlannerParams(), None) is None  # no GPU present
    assert gpu_budget_bytes(PlannerParams(device="cpu"), GpuInfo(10 * GIB, 10 * GIB)) is None
    assert gpu_budget_bytes(PlannerParams(gpu_memory_utilization=0.5), GpuInfo(12 * GIB, 10 * GIB)) == 5 * GIB
    assert gpu_budget_bytes(PlannerParams(available_gpu_memory_gb=8.0), GpuInfo(24 * GIB, 20 * GIB)) == 8 * GIB
    # never more than is free
    assert gpu_budget_bytes(PlannerParams(available_gpu_memory_gb=8.0), GpuInfo(8 * GIB, 7 * GIB)) == 7 * GIB


def test_params_from_settings() -> None:
    settings = Settings(available_gpu_memory_gb=8.0, gpu_memory_offload_threshold_gb=4.0, model_cache_size=2,
                        vllm_kv_cache_gb=3.0, vllm_dtype="float16", enable_gpu_memory_offload=False,
                        vllm_max_model_len=4096, vllm_enforce_eager=True)
    params = PlannerParams.from_settings(settings)
    assert (params.available_gpu_memory_gb, params.offload_threshold_gb, params.model_cache_size) == (8.0, 4.0, 2)
    assert (params.kv_cache_gb, params.chat_dtype, params.enable_offload) == (3.0, "float16", False)
    assert (params.max_model_len, params.enforce_eager) == (4096, True)


# ---- the KV cache and the context ----

def test_kv_cache_is_sized_from_the_config_and_the_context_fitted_to_it() -> None:
    chat = SEED_REAL[0]
    per_token = 28 * 4 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x fp16
    default = plan_kv(chat, 2, kv_cache_gb=None, max_model_len=None)
    assert default.max_model_len == 16384 and default.bytes == max(16384, KV_TOKENS_FLOOR) * per_token
    long = plan_kv(chat, 2, kv_cache_gb=None, max_model_len=32768)
    assert long.max_model_len == 32768 and long.bytes == 32768 * per_token
    assert long.bytes / GIB == pytest.approx(1.75)  # the number: one 32k sequence of Qwen2.5-7B
    fixed = plan_kv(chat, 2, kv_cache_gb=1.0, max_model_len=None)  # a fixed cache: the context fits it
    assert fixed.bytes == GIB and fixed.max_model_len == GIB // per_token // 16 * 16
    assert fixed.max_model_len * per_token <= GIB
    with pytest.raises(PlanError, match=r"32768 tokens needs 1.75 GiB.*LLM_VLLM_KV_CACHE_GB.*LLM_VLLM_MAX_MODEL_LEN"):
        plan_kv(chat, 2, kv_cache_gb=1.0, max_model_len=32768)


def test_a_context_that_cannot_fit_is_a_plan_error_on_the_placement() -> None:
    params = PlannerParams(kv_cache_gb=1.0, max_model_len=32768)
    plan = plan_placements(SEED_REAL, card(24), params)
    chat = plan["Qwen2.5-7B-Instruct-AWQ"]
    assert chat.error is not None and "LLM_VLLM_MAX_MODEL_LEN" in chat.error and not chat.engine_args
    assert plan["Qwen3-Embedding-0.6B"].error is None


# ---- the seed's card and bigger ones: everything resident, vLLM's start-up test passes in any order ----

def resident_orders(plan: dict[str, Placement]) -> list[tuple[str, ...]]:
    return list(itertools.permutations(plan))


def replay_loads(plan: dict[str, Placement], gpu: GpuInfo, order: tuple[str, ...]) -> None:
    """Load the models in `order` on a card that starts with `gpu.free_bytes` free: each finds what the others
    left, vLLM's own test passes for the vLLM model, and what each then holds is within its budget."""
    free = gpu.free_bytes
    for model_id in order:
        placement = plan[model_id]
        assert placement.gpu_bytes <= free, (model_id, order)
        assert vllm_start_check(placement, free, gpu.total_bytes) is None, (model_id, order)
        if placement.engine_args.get("gpu_memory_utilization") is not None:
            # vLLM then holds its context plus utilization x total (weights, activations, the fixed KV cache)
            held = placement.context_bytes + placement.engine_args["gpu_memory_utilization"] * gpu.total_bytes
            assert held <= placement.gpu_bytes + gpu.total_bytes * 1e-4
        free -= placement.gpu_bytes


@pytest.mark.parametrize("total_gb", [8, 24, 80])
def test_the_seed_models_are_all_resident_and_vllm_starts_in_any_order(total_gb: int) -> None:
    gpu = card(total_gb)
    params = PlannerParams(available_gpu_memory_gb=None)
    plan = plan_placements(SEED_REAL, gpu, params)
    budget = gpu_budget_bytes(params, gpu)
    assert budget is not None and sum(p.gpu_bytes for p in plan.values()) <= budget
    chat, emb, rr = (plan[m.id] for m in SEED_REAL)
    assert all(p.device == "cuda" and p.error is None for p in plan.values())
    assert not emb.offloaded and not rr.offloaded
    assert chat.offloaded is (total_gb == 8)  # only the 8 GB card splits the chat model
    args = chat.engine_args
    assert args["kv_cache_memory_bytes"] == chat.kv_cache_bytes > 0
    assert args["max_model_len"] == chat.max_model_len == 16384
    assert args["cpu_offload_gb"] == pytest.approx(chat.cpu_offload_bytes / GIB, abs=1e-4)
    assert 0 < args["gpu_memory_utilization"] < params.gpu_memory_utilization  # its own share, not the setting
    assert chat.context_bytes == ENGINE_CONTEXT_BYTES and emb.context_bytes == rr.context_bytes == 0
    assert emb.activation_bytes > 0 and chat.activation_bytes > 0
    for order in resident_orders(plan):
        replay_loads(plan, gpu, order)


def test_on_the_seed_card_the_chat_model_keeps_a_real_share_of_the_gpu() -> None:
    plan = plan_placements(SEED_REAL, card(8), PlannerParams())
    chat = plan["Qwen2.5-7B-Instruct-AWQ"]
    weights_on_gpu = chat.gpu_bytes - chat.kv_cache_bytes - chat.activation_bytes - chat.context_bytes
    assert weights_on_gpu > GIB and chat.cpu_offload_bytes + weights_on_gpu == chat.weight_bytes


@pytest.mark.parametrize("setting", [0.5, 0.9, 1.0])
def test_vllm_gets_its_own_share_of_the_card_never_the_global_setting(setting: float) -> None:
    gpu = card(24)
    chat = plan_placements(SEED_REAL, gpu, PlannerParams(gpu_memory_utilization=setting))["Qwen2.5-7B-Instruct-AWQ"]
    util = chat.engine_args["gpu_memory_utilization"]
    assert util != setting
    assert util * gpu.total_bytes == pytest.approx(chat.gpu_bytes - chat.context_bytes, abs=gpu.total_bytes * 1e-4)


def test_the_start_up_check_refuses_when_others_hold_the_memory() -> None:
    gpu = card(8)
    chat = plan_placements(SEED_REAL, gpu, PlannerParams())["Qwen2.5-7B-Instruct-AWQ"]
    problem = vllm_start_check(chat, free_bytes=chat.gpu_bytes - GIB, total_bytes=gpu.total_bytes)
    assert problem is not None and "gpu_memory_utilization" in problem and "GiB is free" in problem


def test_cpu_plans_still_give_vllm_its_kv_cache_and_context() -> None:
    plan = plan_placements(SEED_REAL, None, PlannerParams(chat_dtype="float32"))
    args = plan["Qwen2.5-7B-Instruct-AWQ"].engine_args
    assert "gpu_memory_utilization" not in args
    assert args["kv_cache_memory_bytes"] > 0 and args["max_model_len"] == 16384 and args["cpu_offload_gb"] == 0


def test_a_transformers_chat_model_gets_no_vllm_arguments() -> None:
    plan = plan_placements(SEED_REAL, card(24), PlannerParams(), engines={"Qwen2.5-7B-Instruct-AWQ": "transformers"})
    chat = plan["Qwen2.5-7B-Instruct-AWQ"]
    assert not chat.engine_args and chat.context_bytes == 0 and chat.kv_cache_bytes > 0
