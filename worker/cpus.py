"""Which CPUs the worker's threads run on: the one owner of CPU affinity in the worker.

The in-process chat engine (worker/engines/vllm_inprocess.py) and the event loop share one GIL and take turns
with it many times an engine step. On two CPUs, where the engine computes with one thread, the two threads
floated onto different CPUs, and every handover of the GIL woke the other CPU (an inter-processor interrupt, on
a virtual machine an exit to the host): pinning both to one CPU streamed 1.3-2.4x the tokens per second at 1 to
64 streams on the 2-core machine, the other CPU left to the API, Redis and the client. Threads that compute
(embedding and rerank batches, transformers chat, vLLM's engine processes started from a thread) must not
inherit that pin, so the worker's thread pool and such threads start with `compute_anywhere`.

Embedding and rerank batches on a CPU compute in lanes (`Lanes`, `compute_lanes`): threads that each run one batch with
their share of the cores as torch threads, the batches side by side (a batch alone gets every core). A batch
computed by one team of threads over every core waits, at each of its ops, for the slowest thread: when the API,
Redis or the client preempts one, the whole team stalls. In-process, all-MiniLM-L6-v2 on the 2-core machine with
a process taking a third of one core: two lanes of one thread 1.27x the tokens/s of one team of two (4
alternating pairs; 1.03x with nothing else running).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

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


def compute_lanes(device: str, lanes: int) -> int:
    """How many batches compute at once on `device`: on a GPU one (its kernels queue on one device anyway), on a
    CPU `lanes`, at most one per core."""
    return 1 if device != "cpu" else max(1, min(lanes, len(GIVEN)))


def lane_threads(lanes: int, busy: int) -> int:
    """torch threads for a batch that starts on a CPU while `busy` other lanes compute: every core when it runs
    alone (a lone request keeps its latency: one thread took 1.2-1.3x as long for one text on 2 cores), else its
    lane's share of them."""
    return len(GIVEN) if busy == 0 else max(1, len(GIVEN) // lanes)


class Lanes:
    """The threads that compute one model type's batches, each one batch at a time: `compute_lanes` of them, made
    at the first `take` (the device is known by then: torch is imported)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 1
        self._free: list[ThreadPoolExecutor] | None = None

    def free(self) -> bool:
        """Whether a batch could start now (before the first one: yes)."""
        return self._free is None or bool(self._free)

    def take(self, device: str, configured: int) -> ThreadPoolExecutor:
        """A free lane (check `free` first)."""
        if self._free is None:
            self.count = compute_lanes(device, configured)
            self._free = [ThreadPoolExecutor(1, f"{self.name}-compute-{i}", compute_anywhere)
                          for i in range(self.count)]
        return self._free.pop()

    def give_back(self, lane: ThreadPoolExecutor) -> None:
        assert self._free is not None
        self._free.append(lane)

    def threads(self) -> int | None:
        """torch threads for a batch starting on a lane taken now (`lane_threads`); None with one lane: torch's
        threads as they are."""
        if self.count == 1 or self._free is None:
            return None
        return lane_threads(self.count, busy=self.count - len(self._free) - 1)


def set_compute_threads(threads: int) -> None:
    """On a lane's thread, before its batch: torch's OpenMP threads for this thread's ops. `torch._C.set_num_threads`
    sets the calling thread's count, and the one a thread adopts at its first parallel op (a thread that computed
    before keeps its own); `torch.set_num_threads` may be replaced by vLLM."""
    import torch

    torch._C.set_num_threads(threads)
