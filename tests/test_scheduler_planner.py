"""The placement planner, a pure function of the models, the budget and the offload settings."""

from __future__ import annotations

import pytest

from common.discovery import ModelInfo, ModelType
from common.settings import Settings
from worker.scheduler.planner import (
    GIB,
    MIN_GPU_SHARE,
    PlannerParams,
    footprint_bytes,
    gpu_budget_bytes,
    plan_placements,
    weight_bytes,
)

# No overhead or KV reserve: the sizes in the tests are the sizes planned.
BARE = PlannerParams(weight_overhead=0.0, chat_kv_reserve_gb=0.0)


def model(model_id: str, model_type: ModelType, size_gb: float, dtype: str | None = "bfloat16") -> ModelInfo:
    return ModelInfo(id=model_id, type=model_type, path=f"/models/{model_id}", size_bytes=int(size_gb * GIB),
                     dtype=dtype, architecture=None, max_length=None, has_chat_template=False)


SEED = [model("qwen-7b", ModelType.CHAT, 7.0), model("bge-m3", ModelType.EMBEDDING, 1.1),
        model("bge-reranker", ModelType.RERANKER, 1.1)]


@pytest.mark.parametrize("params", [BARE, PlannerParams()], ids=["bare", "default-overheads"])
def test_seed_plan_big_model_offloaded_small_ones_on_the_gpu(params: PlannerParams) -> None:
    budget = 8 * GIB
    plan = plan_placements(SEED, budget, params)
    big, emb, rr = plan["qwen-7b"], plan["bge-m3"], plan["bge-reranker"]
    assert big.device == "cuda" and big.offloaded and big.cpu_offload_bytes > 0
    for small in (emb, rr):
        assert small.device == "cuda" and not small.offloaded
        assert small.gpu_bytes == footprint_bytes(SEED[1], params)
    # The three types can be resident together: the big one leaves room for the two small ones.
    assert big.gpu_bytes + emb.gpu_bytes + rr.gpu_bytes <= budget
    assert big.gpu_bytes + big.cpu_offload_bytes == footprint_bytes(SEED[0], params)
    assert big.cpu_offload_bytes <= big.weight_bytes  # only weights are offloaded


def test_seed_plan_exact_numbers_without_overheads() -> None:
    plan = plan_placements(SEED, 8 * GIB, BARE)
    assert plan["qwen-7b"].gpu_bytes == 8 * GIB - 2 * int(1.1 * GIB)
    assert plan["qwen-7b"].cpu_offload_bytes == int(7 * GIB) - plan["qwen-7b"].gpu_bytes
    assert plan["qwen-7b"].cpu_offload_gb == pytest.approx(1.2, abs=1e-6)
    assert plan["qwen-7b"].max_memory() == {0: plan["qwen-7b"].gpu_bytes, "cpu": plan["qwen-7b"].cpu_offload_bytes}
    assert plan["bge-m3"].max_memory() is None


def test_no_gpu_places_everything_on_cpu() -> None:
    plan = plan_placements(SEED, None, PlannerParams())
    assert {p.device for p in plan.values()} == {"cpu"}
    assert all(p.gpu_bytes == 0 and p.cpu_offload_bytes == 0 for p in plan.values())
    assert plan["qwen-7b"].weight_bytes == 7 * GIB


def test_offload_disabled_keeps_big_models_whole_on_the_gpu() -> None:
    plan = plan_placements(SEED, 8 * GIB, PlannerParams(enable_offload=False, weight_overhead=0.0,
                                                        chat_kv_reserve_gb=0.0))
    assert not any(p.offloaded for p in plan.values())
    assert plan["qwen-7b"].gpu_bytes == 7 * GIB


def test_a_big_model_that_fits_next_to_the_small_ones_is_not_offloaded() -> None:
    plan = plan_placements(SEED, 16 * GIB, BARE)
    assert not plan["qwen-7b"].offloaded and plan["qwen-7b"].gpu_bytes == 7 * GIB


def test_room_is_kept_per_type_slot() -> None:
    """Two small embedding models with one slot: only the larger one is reserved."""
    models = [SEED[0], model("e1", ModelType.EMBEDDING, 1.0), model("e2", ModelType.EMBEDDING, 2.0)]
    plan = plan_placements(models, 8 * GIB, PlannerParams(weight_overhead=0.0, chat_kv_reserve_gb=0.0))
    assert plan["qwen-7b"].gpu_bytes == 6 * GIB
    two_slots = PlannerParams(weight_overhead=0.0, chat_kv_reserve_gb=0.0, model_cache_size=2)
    assert plan_placements(models, 8 * GIB, two_slots)["qwen-7b"].gpu_bytes == 5 * GIB


def test_an_offloaded_model_keeps_a_minimum_share_of_the_gpu() -> None:
    models = [SEED[0], model("e", ModelType.EMBEDDING, 3.9), model("r", ModelType.RERANKER, 3.9)]
    big = plan_placements(models, 8 * GIB, BARE)["qwen-7b"]
    assert big.gpu_bytes == int(8 * GIB * MIN_GPU_SHARE)


def test_a_small_model_larger_than_the_whole_budget_is_offloaded() -> None:
    plan = plan_placements([model("e", ModelType.EMBEDDING, 3.0)], 2 * GIB, BARE)
    assert plan["e"].gpu_bytes == 2 * GIB and plan["e"].cpu_offload_bytes == 1 * GIB


def test_the_kv_reserve_stays_on_the_gpu() -> None:
    params = PlannerParams(weight_overhead=0.0, chat_kv_reserve_gb=2.0)
    chat = plan_placements([SEED[0]], 8 * GIB, params)["qwen-7b"]
    assert chat.gpu_bytes + chat.cpu_offload_bytes == 9 * GIB
    assert chat.gpu_bytes >= 2 * GIB and chat.cpu_offload_bytes == 1 * GIB


def test_resident_size_follows_the_load_dtype() -> None:
    fp32_chat = model("c", ModelType.CHAT, 4.0, dtype="float32")
    assert weight_bytes(fp32_chat, PlannerParams(chat_dtype="bfloat16")) == 2 * GIB
    assert weight_bytes(fp32_chat, PlannerParams(chat_dtype="auto")) == 4 * GIB
    assert weight_bytes(model("x", ModelType.CHAT, 4.0, dtype=None), PlannerParams(chat_dtype="float16")) == 4 * GIB
    assert footprint_bytes(model("e", ModelType.EMBEDDING, 1.0), PlannerParams(weight_overhead=0.5)) == int(1.5 * GIB)


def test_budget_from_settings_or_measured_free_memory() -> None:
    assert gpu_budget_bytes(PlannerParams(), free_device_bytes=None) is None  # no GPU present
    assert gpu_budget_bytes(PlannerParams(device="cpu"), free_device_bytes=10 * GIB) is None
    assert gpu_budget_bytes(PlannerParams(gpu_memory_utilization=0.5), free_device_bytes=10 * GIB) == 5 * GIB
    assert gpu_budget_bytes(PlannerParams(available_gpu_memory_gb=8.0), free_device_bytes=20 * GIB) == 8 * GIB


def test_params_from_settings() -> None:
    settings = Settings(available_gpu_memory_gb=8.0, gpu_memory_offload_threshold_gb=4.0, model_cache_size=2,
                        vllm_kv_cache_gb=3.0, vllm_dtype="float16", enable_gpu_memory_offload=False)
    params = PlannerParams.from_settings(settings)
    assert (params.available_gpu_memory_gb, params.offload_threshold_gb, params.model_cache_size) == (8.0, 4.0, 2)
    assert (params.chat_kv_reserve_gb, params.chat_dtype, params.enable_offload) == (3.0, "float16", False)
