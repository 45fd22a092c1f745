"""vLLM's C++ RMSNorm kernels on a CPU (worker/engines/vllm_cpu_kernels.py): the same values as vLLM's native
norms, strided inputs included; first in the priority of every chat model's engine arguments, and in vLLM's
engine config built from them; not named where vLLM's allow-list of plugins leaves ours out. vLLM's Python
stand-ins for Triton kernels are registered once per process, not at every engine start. (That vLLM's own
engine processes load them, and that answers keep their tokens, is what the chat tests check end to end.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.discovery import scan_models
from common.settings import Settings
from worker.engines import vllm_cpu_kernels
from worker.engines.vllm_cpu_kernels import PROVIDER


def test_the_kernels_give_vllms_native_values() -> None:
    import torch
    from vllm import ir

    vllm_cpu_kernels.register()
    vllm_cpu_kernels.register()  # vLLM may load a plugin more than once in a process
    torch.manual_seed(0)
    qkv = torch.randn(8, 3 * 128)
    weight, eps = torch.randn(32), 1e-6
    heads = qkv.split(128, dim=-1)[0].view(8, 4, 32)  # Qwen3's q norm: a strided view
    x, residual, w = torch.randn(8, 64), torch.randn(8, 64), torch.randn(64)
    rms, fused = ir.ops.rms_norm, ir.ops.fused_add_rms_norm
    assert not heads.is_contiguous()
    with rms.set_priority([PROVIDER, "native"]), fused.set_priority([PROVIDER, "native"]):
        assert torch.allclose(rms(heads, weight, eps), rms.impls["native"].impl_fn(heads, weight, eps), atol=1e-5)
        expected = fused.impls["native"].impl_fn(x, residual, w, eps)
        got = fused(x.clone(), residual.clone(), w, eps)
        transposed = x.t().contiguous().t()  # the same values, strided: left to the native implementation
        assert not transposed.is_contiguous()
        strided = fused(transposed, residual.clone(), w, eps)
    for actual in (got, strided):
        assert torch.allclose(actual[0], expected[0], atol=1e-5) and torch.allclose(actual[1], expected[1])


def test_chat_engines_put_the_kernels_first(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.engines.vllm_chat import engine_args

    info = scan_models(models_dir).models["tiny-qwen3-chat"]
    settings = Settings(models_dir=models_dir)
    config = engine_args(info, settings, None).create_engine_config()
    priority = config.kernel_config.ir_op_priority
    assert priority.rms_norm[0] == priority.fused_add_rms_norm[0] == PROVIDER
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")  # vLLM would not load ours in its processes
    assert vllm_cpu_kernels.priority() is None


def test_vllms_triton_stand_ins_register_once_per_process() -> None:
    from vllm.platforms.cpu import CpuPlatform
    from vllm.triton_utils import dispatcher

    vllm_cpu_kernels.register()
    CpuPlatform.register_triton_kernel_overrides()  # as each engine start calls it
    first = dict(dispatcher._registry)
    assert first
    CpuPlatform.register_triton_kernel_overrides()
    assert dispatcher._registry == first  # not registered again over the stand-ins (a scan of every module)
