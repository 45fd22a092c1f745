"""vLLM's engine in this process: `LLMEngine` without an engine-core process, stepped by one thread, behind
the part of `AsyncLLM`'s surface that the chat engine uses (`generate`, `abort`, `sleep`, `wake_up`,
`get_num_unfinished_requests`, `shutdown`).

Why: on a CPU, `AsyncLLM` spawns an engine-core process and a model-runner process, each importing torch
and vLLM again (25 s and more on a small machine before any compile), so every cold switch to a chat model
pays it. In this process the engine starts in about 2-4 s (a second load of the same model in 0.3 s). On a
GPU the separate process is kept by default: there the engine's busy loop would compete with this process's
event loop for the GIL. (vLLM's CPU worker also replaces `torch.set_num_threads` for the whole process, and
sets the global torch seed: the worker's other engines never call the first, and unseeded sampling of the
transformers chat engine starts from that seed.)

Every call into vLLM happens on the engine thread (vLLM's engine is not thread-safe): the event loop sends
commands through a queue, and each step's outputs come back to the loop in one callback. Several chat models
may be resident in one worker: vLLM keeps its forward context, current config and distributed groups in
module globals, so the engines of one process take turns (one lock around every call into vLLM: on a CPU
each step uses every core anyway) and share the distributed groups, which stay up for the life of the
process. Computing with one thread (on two cores), the engine thread and the event loop share one CPU
(worker/cpus.py): they hand the GIL to each other many times a step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from common.errors import EngineFailure
from worker import cpus

log = logging.getLogger(__name__)

Stream = asyncio.Queue[Any]  # RequestOutputs, then possibly an exception

# How often Python hands the GIL between threads (default 5 ms): the engine thread and the event loop take turns
# many times a step. 0.5 ms measured +20-30% tokens/s at 8 and 64 streams on the 2-core machine.
SWITCH_INTERVAL_S = 0.0005
_TURN = threading.Lock()  # held by an engine thread for each call into vLLM (module globals: see above)


def engine_threads() -> int:
    """The engine thread's intra-op threads: one core fewer than the process may use, as vLLM's own CPU processes
    keep one for the scheduler and server. With every core, on 2 cores, its two OpenMP threads spun against the
    event loop, the API and Redis: one core fewer streamed +43% tokens/s at 64 streams (+7% at 8) for half the
    worker's CPU per token. Other threads (embedding batches) keep their own count."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


class InProcessEngine:
    def __init__(self, args: Any, name: str) -> None:
        """Start the engine on its thread (where it binds its CPU threads and later steps) and wait for it;
        vLLM's refusal to start is raised here."""
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, Stream]] = {}
        self._dead: BaseException | None = None
        started: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(args, started), name=f"vllm-{name}", daemon=True)
        self._thread.start()
        self.engine = started.result()

    # ---- AsyncLLM's surface ----

    async def generate(self, prompt: Any, params: Any, request_id: str, *,
                       reasoning_ended: bool | None = None) -> AsyncIterator[Any]:
        """The request's outputs as the engine makes them; vLLM's input errors (ValueError, TypeError)
        are raised by the first `anext`, as `AsyncLLM.generate` does."""
        stream: Stream = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), stream)
        try:
            await self._call(lambda: self._add(request_id, prompt, params, reasoning_ended))
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            self._streams.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        if self._dead is None:
            self._post(lambda: self.engine.abort_request([request_id]))  # nobody waits for it

    async def sleep(self, level: int = 1) -> None:
        await self._call(lambda: self.engine.sleep(level))

    async def wake_up(self) -> None:
        await self._call(self.engine.wake_up)

    def get_num_unfinished_requests(self) -> int:
        return int(self.engine.get_num_unfinished_requests())

    def shutdown(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=60)
        cpus.release_loop_cpu(self._thread.native_id)
        self._fail_all(EngineFailure("the chat engine was unloaded", code="engine_error"))
        with _TURN:
            _teardown(self.engine.engine_core)

    # ---- the engine thread ----

    def _add(self, request_id: str, prompt: Any, params: Any, reasoning_ended: bool | None) -> None:
        request = self.engine.input_processor.process_inputs(
            request_id, prompt, params, supported_tasks=self.engine.get_supported_tasks())
        if reasoning_ended is not None:
            request.reasoning_ended = reasoning_ended
        self.engine.add_request(request_id, request, params)

    async def _call(self, work: Callable[[], Any]) -> Any:
        """Run `work` on the engine thread; its result or exception, awaited here."""
        if self._dead is not None:
            raise EngineFailure(f"the chat engine failed: {self._dead}", code="engine_error")
        return await asyncio.wrap_future(self._post(work))

    def _post(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Queue `work` for the engine thread; the future holds its result or exception (never the thread's)."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(work())
            except BaseException as exc:  # handed to whoever waits
                done.set_exception(exc)

        self._inbox.put(run)
        return done

    def _run(self, args: Any, started: concurrent.futures.Future[Any]) -> None:
        import torch
        from vllm.v1.engine.llm_engine import LLMEngine

        threads = engine_threads()
        torch._C.set_num_threads(threads)  # this thread's only (OpenMP); vLLM stubs torch.set_num_threads
        cpus.share_loop_cpu(threads)  # with one compute thread: on the event loop's CPU (worker/cpus.py)

        # vLLM reads this when it builds the config (on a CPU it picks its in-process executor only then).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            with _TURN:
                self.engine = LLMEngine.from_engine_args(args, enable_multiprocessing=False)
        except BaseException as exc:  # raised by __init__, in the loading thread
            started.set_exception(exc)
            return
        started.set_result(self.engine)
        self._serve()

    def _serve(self) -> None:
        while True:
            busy = self.engine.has_unfinished_requests()
            try:
                command = self._inbox.get(block=not busy)  # idle: sleep until there is work
                while command is not None:
                    with _TURN:
                        command()
                    command = self._inbox.get_nowait()
                return  # None: shut down
            except queue.Empty:
                pass
            if not self.engine.has_unfinished_requests():
                continue
            try:
                with _TURN:
                    outputs = self.engine.step()
            except Exception as exc:  # the engine is broken: every stream learns it, later calls too
                log.exception("the in-process vLLM engine failed")
                self._dead = exc
                self._fail_all(EngineFailure(f"the chat engine failed: {exc}", code="engine_error"))
                self._drain_after_death()
                return
            self._deliver(outputs)

    def _deliver(self, outputs: list[Any]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Any]]] = {}
        for output in outputs:
            target = self._streams.get(output.request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], output))
        for loop, items in by_loop.items():  # one wake-up of the loop per step, not one per stream
            loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, error: BaseException) -> None:
        for loop, stream in list(self._streams.values()):
            loop.call_soon_threadsafe(stream.put_nowait, error)

    def _drain_after_death(self) -> None:
        """After a failure, answer commands (with the failure) until shutdown."""
        while (command := self._inbox.get()) is not None:
            with _TURN:
                command()


def _teardown(client: Any) -> None:
    """vLLM's `EngineCore.shutdown` without what made a switch cost seconds: the distributed groups stay for
    the process's next engine (the same for every single-device engine; tearing them down cost 0.12 s), and
    no full collection (vLLM's worker unfreezes the heap and collects it twice, 0.5-0.6 s apiece in a worker;
    the model runner's own shutdown, called here, collects only what is not settled). The model's memory is
    released by hand instead: each vLLM parameter's `weight_loader` is a method of its module, a cycle only a
    full collection would break, so every module holding parameters is emptied; the runner drops the KV
    cache. What stays in cycles is small objects, for the worker's next full collection
    (`collect_garbage_sometimes`)."""
    import torch

    core = client.engine_core
    client._finalizer.detach()  # its callback is the full EngineCore.shutdown
    runner = core.model_executor.driver_worker.worker.model_runner
    model = runner.get_model()
    core.structured_output_manager.clear_backend()
    runner.shutdown()
    core.scheduler.shutdown()
    for module in list(model.modules()):
        if module._parameters:  # its own, never shared (rotary embeddings are, across engines: vLLM caches them)
            for tensor in module.parameters(recurse=False):
                tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
            module.__dict__.clear()  # packed weights (oneDNN handles) live in plain attributes
    runner.__dict__.clear()  # its input buffers (max_num_batched_tokens x hidden size, and more)


def _put_all(items: list[tuple[Stream, Any]]) -> None:
    for stream, output in items:
        stream.put_nowait(output)
