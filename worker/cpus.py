"""Which CPUs the worker's threads run on: the one owner of CPU affinity in the worker.

The in-process chat engine (worker/engines/vllm_inprocess.py) and the event loop share one GIL and take turns
with it many times an engine step. On two CPUs, where the engine computes with one thread, the two threads
floated onto different CPUs, and every handover of the GIL woke the other CPU (an inter-processor interrupt, on
a virtual machine an exit to the host): pinning both to one CPU streamed 1.3-2.4x the tokens per second at 1 to
64 streams on the 2-core machine, the other CPU left to the API, Redis and the client. Threads that compute
(embedding and rerank batches, transformers chat, vLLM's engine processes started from a thread) must not
inherit that pin, so the worker's thread pool and such threads start with `compute_anywhere`.
"""

from __future__ import annotations

import os
import threading

GIVEN = frozenset(os.sched_getaffinity(0))  # the CPUs this worker was given, read when it starts
_SHARED: set[int] = set()  # the engine threads that pinned themselves with the event loop (native ids)
_LOCK = threading.Lock()


def compute_anywhere() -> None:
    """The calling thread may run on every CPU the worker was given (a thread pool's initializer)."""
    os.sched_setaffinity(0, GIVEN)


def share_loop_cpu(compute_threads: int) -> int | None:
    """On the engine thread: pin it and the event loop (the main thread) to one CPU, when it computes with one
    thread and there is another CPU for everything else; the CPU, or None (nothing pinned). Several workers
    on one machine pick CPUs by process id, not all the same one."""
    if compute_threads != 1 or len(GIVEN) < 2:
        return None
    cpus = sorted(GIVEN)
    cpu = cpus[os.getpid() % len(cpus)]
    with _LOCK:
        os.sched_setaffinity(0, {cpu})
        os.sched_setaffinity(_main_thread(), {cpu})
        _SHARED.add(threading.get_native_id())
    return cpu


def release_loop_cpu(engine_thread: int | None) -> None:
    """After an engine thread that shared the loop's CPU has stopped: the loop goes back to every CPU once no
    other engine thread shares it."""
    with _LOCK:
        if engine_thread not in _SHARED:
            return
        _SHARED.discard(engine_thread)
        if not _SHARED:
            os.sched_setaffinity(_main_thread(), GIVEN)


def _main_thread() -> int:
    """The main thread's id for `sched_setaffinity` (on Linux the process id: it sets that one thread)."""
    return threading.main_thread().native_id or os.getpid()
