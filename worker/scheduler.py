"""The worker's model scheduler: the pure Policy (worker/policy/) driven with real engines and jobs.

Handlers ask for their job's model (`acquire`: returns the engine once the policy grants the job),
run the job, and say when it is done (`release`). The policy decides what to load, park, unload and
whom to serve; this class carries its decisions out (loads and unloads in threads) and reports each
completion back. It is the only code that creates or frees engines. Everything runs on the worker's
event loop; the policy is never called from inside one of its effects (see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from common.errors import EngineFailure, ModelNotFound, ServiceError
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.base import Engine, settle_heap
from worker.engines.registry import make_engine
from worker.models import ModelManager
from worker.policy.interface import PolicyConfig, Refusal, RefusalCode
from worker.policy.planner import GpuInfo, Placement, PlannerParams, gpu_budget_bytes, plan_placements
from worker.policy.policy import Policy

log = logging.getLogger(__name__)

TICK_S = 0.5  # the policy also looks at the clock (starvation, idle unload, back-off) this often


def device_memory(settings: Settings) -> GpuInfo | None:
    """The GPU's total and free memory now (None: no GPU, or LLM_DEVICE=cpu). Measured once, before any load."""
    if settings.device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return GpuInfo(int(total), int(free))


def refusal_error(refusal: Refusal) -> ServiceError:
    if refusal.code is RefusalCode.NOT_FOUND:
        return ModelNotFound(refusal.message, param="model")
    return EngineFailure(refusal.message, code=str(refusal.code))


class Scheduler:
    def __init__(self, settings: Settings, models: ModelManager) -> None:
        self.settings = settings
        self.models = models
        self.params = PlannerParams.from_settings(settings)
        self.gpu = device_memory(settings)
        self.budget = gpu_budget_bytes(self.params, self.gpu)
        self.policy = Policy(PolicyConfig.from_settings(settings, self.budget), self)
        self.engines: dict[str, Engine] = {}  # resident, serving
        self._parked: dict[str, Engine] = {}  # evicted, weights kept in CPU memory
        self._loading_since: dict[str, float] = {}  # models being loaded now: since when (for /v1/models)
        self._grants: dict[str, asyncio.Future[Engine]] = {}  # job id -> its engine, once granted
        self._cancelled: set[str] = set()  # loads the policy cancelled while they ran
        self._tasks: set[asyncio.Task[None]] = set()
        self._admin_jobs = 0
        self.changed = asyncio.Event()  # a model started or stopped loading, or left: publish the state now
        self.counts: Counter[str] = Counter()  # loads, warm loads, parks, unloads, failures
        self.load_seconds: dict[str, float] = {"last": 0.0, "total": 0.0}

    # ---- what handlers and the worker call ----

    def refresh(self) -> None:
        """Give the policy the catalog and each model's placement (at start and after each rescan)."""
        placements = plan_placements(self.models.catalog.models.values(), self.gpu, self.params,
                                     self.models.chat_engines())
        self.policy.set_models(placements, time.time())

    async def acquire(self, job_id: str, model_id: str, model_type: ModelType, since: float) -> Engine:
        """The engine for a job, once the policy grants it (load or switch first when needed).
        Raises the job's error when the model cannot be served. Always pair with `release`."""
        self.models.info(model_id, model_type)  # unknown id or wrong type: that error, at once
        grant: asyncio.Future[Engine] = asyncio.get_running_loop().create_future()
        self._grants[job_id] = grant
        self.policy.job_waiting(job_id, model_id, since, time.time())
        if model_id not in self.engines:  # not resident: the job waits for a load, and its log line says so
            log.info("job %s waits for %s (%s)", job_id, model_id,
                     "loading" if model_id in self._loading_since else "to be loaded")
        try:
            engine = await grant
        except BaseException:  # refused, or the job's caller left / its deadline passed while it waited
            self.release(job_id)
            raise
        return engine

    def release(self, job_id: str) -> None:
        """The job is answered, cancelled or expired: its model may be switched away now."""
        if self._grants.pop(job_id, None) is not None:
            self.policy.job_done(job_id, time.time())

    def preload(self, model_id: str) -> None:
        """Admin: load a model as a job would (it serves nothing and leaves at once)."""
        info = self.models.catalog.models.get(model_id)
        if info is not None:
            self._admin_jobs += 1
            self._spawn(self._touch(f"admin-load-{self._admin_jobs}", model_id, info.type))

    async def _touch(self, job_id: str, model_id: str, model_type: ModelType) -> None:
        try:
            await self.acquire(job_id, model_id, model_type, time.time())
        except ServiceError as exc:
            log.warning("admin load of %s failed: %s", model_id, exc.message)
            return
        self.release(job_id)

    def set_pins(self, pinned: set[str]) -> None:
        now = time.time()
        for model_id in sorted(pinned - self.policy.pinned):
            self.policy.pin(model_id, now)
        for model_id in sorted(self.policy.pinned - pinned):
            self.policy.unpin(model_id, now)

    def drop(self, model_id: str) -> bool:
        """Admin: unload a model now (and unpin it); False when it is busy or holds no memory."""
        return model_id in self.policy.states and self.policy.drop(model_id, time.time())

    async def run(self) -> None:
        """Let the policy look at the clock: starvation limits, idle unloads, load back-offs."""
        while True:
            now = time.time()
            deadline = self.policy.next_deadline(now)
            await asyncio.sleep(TICK_S if deadline is None else min(TICK_S, max(deadline - now, 0.0) + 0.01))
            self.policy.tick(time.time())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in [*self.engines.values(), *self._parked.values()]:
            await asyncio.to_thread(_quietly_unload, engine)
        self.engines.clear()
        self._parked.clear()

    def states(self) -> dict[str, dict[str, Any]]:
        """Per model: state, error, placement, pinned, jobs waiting and running and the age of the oldest (for
        /v1/models, and for the other workers' routing)."""
        out: dict[str, dict[str, Any]] = {}
        now = time.time()
        for model_id, st in self.policy.status().items():
            placement = None if st.placement is None else st.placement.card()
            out[model_id] = {"state": str(st.state), "error": st.error, "pinned": st.pinned,
                             "waiting": st.waiting, "running": st.running, "placement": placement,
                             "oldest_s": 0.0 if st.oldest_job is None else round(max(0.0, now - st.oldest_job), 3)}
            if model_id in self._loading_since:
                out[model_id]["loading_s"] = round(now - self._loading_since[model_id], 1)
        return out

    def capacity(self) -> dict[str, Any]:
        """What the other workers need to judge this one's room: its GPU budget and per-type slots."""
        return {"budget_bytes": self.budget, "cache_size": self.settings.model_cache_size}

    def set_elsewhere(self, models: frozenset[str]) -> None:
        """The models other live workers hold (see Policy.set_elsewhere)."""
        self.policy.set_elsewhere(models, time.time())

    def stats(self) -> dict[str, float]:
        return {"model_loads": self.counts["load"], "model_loads_warm": self.counts["warm_load"],
                "model_load_failures": self.counts["load_failed"], "model_parks": self.counts["park"],
                "model_unloads": self.counts["unload"], "model_load_seconds_last": self.load_seconds["last"],
                "model_load_seconds_total": self.load_seconds["total"], "models_resident": len(self.engines),
                "models_parked": len(self._parked)}

    # ---- Effects: the policy's decisions, started here and reported back when done ----

    def load(self, model_id: str, placement: Placement) -> None:
        self._spawn(self._load(model_id, placement))

    def cancel_load(self, model_id: str) -> None:
        self._cancelled.add(model_id)  # the running load unloads what it made, then reports `unloaded`

    def unload(self, model_id: str) -> None:
        engine = self.engines.pop(model_id, None) or self._parked.pop(model_id, None)
        self._spawn(self._unload(model_id, engine))

    def park(self, model_id: str) -> None:
        self._spawn(self._park(model_id, self.engines.pop(model_id)))

    def serve(self, model_id: str, job_ids: list[str]) -> None:
        engine = self.engines[model_id]
        for job_id in job_ids:
            grant = self._grants.get(job_id)
            if grant is not None and not grant.done():
                grant.set_result(engine)

    def fail_waiters(self, model_id: str, job_ids: list[str], refusal: Refusal) -> None:
        for job_id in job_ids:
            grant = self._grants.get(job_id)
            if grant is not None and not grant.done():
                grant.set_exception(refusal_error(refusal))

    # ---- the work behind the effects ----

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, model_id: str, placement: Placement) -> None:
        started = time.perf_counter()
        self._loading_since[model_id] = time.time()
        self.changed.set()
        try:
            await self._load_engine(model_id, placement, started)
        finally:
            self._loading_since.pop(model_id, None)
            self.changed.set()

    async def _load_engine(self, model_id: str, placement: Placement, started: float) -> None:
        info = self.models.catalog.models[model_id]
        log.info("loading %s (%s, %.1f MiB on disk) on %s: %.1f MiB there, %.1f MiB offloaded to CPU memory%s",
                 model_id, info.type, info.size_bytes / 2**20, placement.device, placement.gpu_bytes / 2**20,
                 placement.cpu_offload_bytes / 2**20, ", from its parked copy" if model_id in self._parked else "")
        engine = self._parked.pop(model_id, None)
        if engine is not None:
            engine = await self._wake(model_id, engine)
        warm = engine is not None
        try:
            if engine is None:
                engine = await asyncio.to_thread(make_engine, info, self.settings, placement)
                await asyncio.to_thread(engine.load)
        except Exception as exc:  # a model that fails to load answers its jobs; the worker goes on
            error = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
            log.warning("loading %s failed: %s", model_id, error, exc_info=not isinstance(exc, ServiceError))
            self.counts["load_failed"] += 1
            self._cancelled.discard(model_id)
            self.policy.load_failed(model_id, error, time.time())
            return
        if model_id in self._cancelled:
            self._cancelled.discard(model_id)
            await asyncio.to_thread(_quietly_unload, engine)
            self.policy.unloaded(model_id, time.time())
            return
        seconds = time.perf_counter() - started
        self.counts["warm_load" if warm else "load"] += 1
        self.load_seconds["last"] = round(seconds, 4)
        self.load_seconds["total"] += seconds
        log.info("loaded %s in %.3f s (%s)", model_id, seconds, "warm, from CPU memory" if warm else "from disk")
        settle_heap()
        self.engines[model_id] = engine
        self.policy.loaded(model_id, time.time())

    async def _wake(self, model_id: str, engine: Engine) -> Engine | None:
        """The parked engine back in service (a copy, not a disk read); None when that failed (then
        its copy is freed and the caller loads the model from disk)."""
        try:
            await engine.wake_async()
            return engine
        except Exception:
            log.exception("waking %s from its parked copy failed; loading it from disk", model_id)
            await asyncio.to_thread(_quietly_unload, engine)
            return None

    async def _park(self, model_id: str, engine: Engine) -> None:
        try:
            parked = await engine.park_async()
        except Exception:
            log.exception("parking %s failed; unloading it", model_id)
            parked = False
        if parked:
            self._parked[model_id] = engine
            self.counts["park"] += 1
        else:
            await asyncio.to_thread(_quietly_unload, engine)
            self.counts["unload"] += 1
        self.policy.unloaded(model_id, time.time(), parked=parked, parked_bytes=engine.parked_bytes if parked else None)
        self.changed.set()

    async def _unload(self, model_id: str, engine: Engine | None) -> None:
        if engine is not None:
            await asyncio.to_thread(_quietly_unload, engine)
            self.counts["unload"] += 1
        self.policy.unloaded(model_id, time.time())
        self.changed.set()


def _quietly_unload(engine: Engine) -> None:
    try:
        engine.unload()
    except Exception:
        log.exception("unloading %s failed", engine.info.id)

