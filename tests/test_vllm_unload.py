"""Unloading an in-process vLLM engine (worker/engines/vllm_inprocess.py) gives its weights, its packed weights
and its KV cache back at once, without the full collections of vLLM's own teardown (0.5-0.6 s each in a worker:
most of a chat switch on a CPU), and the next engine starts in the same process. In a child process: vLLM
stubs torch's thread setting and seeds the global generator for the whole process it runs in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT

CHILD = r"""
import gc, json, sys, weakref
from common.discovery import scan_models
from common.settings import Settings
from worker.engines.vllm_chat import engine_args
from worker.engines.vllm_inprocess import InProcessEngine

settings = Settings(models_dir=sys.argv[1])
info = scan_models(settings.models_dir).models["tiny-qwen3-chat"]
full = []  # collections of the whole heap: its settled part unfrozen (vLLM's teardown does it)
gc.callbacks.append(lambda phase, data: full.append(1) if phase == "start" and data["generation"] == 2
                    and gc.get_freeze_count() == 0 else None)
report = {}
for round in range(2):  # the second engine starts where the first was torn down
    engine = InProcessEngine(engine_args(info, settings, None), "chat")
    runner = engine.engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    tensors = [*runner.kv_caches, *runner.get_model().parameters()]  # (buffers: rotary caches, shared)
    handles = [v for m in runner.get_model().modules() for v in vars(m).values() if "DNNL" in type(v).__name__]
    refs = [weakref.ref(t) for t in [*tensors, *handles]]
    del runner, tensors, handles
    gc.freeze()  # as the worker settles its heap after each load
    full.clear()
    engine.shutdown()
    del engine
    report[round] = {"alive": sum(r() is not None for r in refs), "tracked": len(refs), "full_collections": len(full)}
print(json.dumps(report))
"""


def test_an_unload_frees_the_model_without_a_full_collection(models_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT") or str(ROOT / ".cache" / "vllm")}
    done = subprocess.run([sys.executable, "-c", CHILD, str(models_dir)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for round in ("0", "1"):
        assert report[round]["tracked"] > 20  # KV cache, weights (and packed weights where vLLM packs them)
        assert report[round]["alive"] == 0, report
        assert report[round]["full_collections"] == 0, report
