"""The batch lifecycle as arq jobs, run by an arq Worker inside every API process.

- `validate_batch` (job id `validate:{batch}`): checks every input line; `failed`, or `in_progress`
  and the first `run_batch`.
- `run_batch` (`run:{batch}`): fans lines out and collects answers for a slice of SLICE_S, then
  continues by raising arq's `Retry` (the same job id, so enqueueing it again is a no-op and aborting
  it needs no bookkeeping); when every line is done: `finalizing` and `finalize_batch`.
- `finalize_batch` (`finalize:{batch}`): publishes the output and error files and ends the batch:
  `completed`, or `cancelled` / `expired` after writing the unfinished lines to the error file.
- `sweep_batches` (arq cron, every SWEEP_S on any replica): expires batches past their window, and
  re-enqueues the job every active batch needs (a no-op while that job exists), so a batch resumes
  after any crash. Cancelling aborts the running job (arq abort) and enqueues the finaliser.

Jobs are serialised as JSON (never pickle). Every job takes the batch's lease first; a job that
cannot (another holds it) retries shortly. A hard-killed API process's job runs again once arq's
in-progress key expires (the longest job timeout + 10 s); a stopped one's at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import orjson
from arq import Retry, cron
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from arq.jobs import Job as ArqJob
from arq.jobs import ResultNotFound
from arq.worker import Worker, func
from redis.exceptions import RedisError

from api.batches.runner import BatchEnv, Driver
from api.batches.schemas import Status
from api.batches.store import Lease, LeaseLost
from api.batches.validate import all_errors, check_models, scan_input
from common import keys
from common.errors import Unavailable

log = logging.getLogger(__name__)

SLICE_S = 20.0
SWEEP_S = 2
JOB_TIMEOUT_S = 120  # validation and finalisation of a 200 MB file fit easily
MAX_JOBS = 100  # lifecycle jobs one API process runs at once (mostly waiting on Redis)
FOREVER = 10**9  # max_tries: our jobs end themselves (the batch's expiry ends everything)


def dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, default=str)


def loads(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(data)
    return obj


class LifecycleQueue:
    """Enqueue and abort the lifecycle jobs (deterministic job ids make every call idempotent)."""

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool

    async def validate(self, batch_id: str) -> None:
        await self.pool.enqueue_job("validate_batch", batch_id, _job_id=f"validate:{batch_id}")

    async def run(self, batch_id: str) -> None:
        await self.pool.enqueue_job("run_batch", batch_id, _job_id=f"run:{batch_id}")

    async def finalize(self, batch_id: str) -> None:
        await self.pool.enqueue_job("finalize_batch", batch_id, _job_id=f"finalize:{batch_id}")

    async def abort(self, job_id: str) -> None:
        """arq's abort: the job is cancelled where it runs, or skipped when it starts."""
        job = ArqJob(job_id, self.pool, _queue_name=keys.ARQ_QUEUE, _deserializer=loads)
        with contextlib.suppress(asyncio.TimeoutError, ResultNotFound):
            await job.abort(timeout=0, poll_delay=0.05)

    async def stop(self, batch_id: str) -> None:
        """Cancelled or expired: stop its validation or run, and let the finaliser end it."""
        await self.abort(f"validate:{batch_id}")
        await self.abort(f"run:{batch_id}")
        await self.finalize(batch_id)

    async def forget(self, batch_id: str) -> None:
        """After the end: drop abort requests for jobs that never ran again (arq keeps them until they do)."""
        await self.pool.zrem(abort_jobs_ss, f"validate:{batch_id}", f"run:{batch_id}")


async def _leased(ctx: dict[str, Any], batch_id: str, work: Callable[[Lease], Coroutine[Any, Any, None]]) -> None:
    """Run `work` holding the batch's lease; retry shortly when it is taken or Redis is away."""
    env: BatchEnv = ctx["env"]
    try:
        lease = await env.store.acquire(batch_id)
    except (RedisError, OSError) as exc:
        raise Retry(defer=1) from exc
    if lease is None:
        raise Retry(defer=0.5)
    try:
        await work(lease)
    except (RedisError, OSError) as exc:
        log.warning("batch %s: redis error %s; retrying", batch_id, exc)
        raise Retry(defer=1) from exc
    except LeaseLost:
        log.warning("batch %s: lost its lease; another process drives it", batch_id)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await asyncio.shield(env.store.release(lease))


async def validate_batch(ctx: dict[str, Any], batch_id: str) -> None:
    env: BatchEnv = ctx["env"]
    queue: LifecycleQueue = ctx["queue"]

    async def work(lease: Lease) -> None:
        state = await env.store.require(batch_id)
        if state.status != Status.VALIDATING:
            return
        path = env.input_path(batch_id)
        if not path.is_file():  # LLM_DATA_DIR not shared between the API replicas
            missing = [{"code": "input_file_missing", "message": f"{path} is not on this API's data volume",
                        "param": "input_file_id", "line": None}]
            await env.store.transition(batch_id, [Status.VALIDATING], Status.FAILED,
                                       errors=orjson.dumps(missing).decode())
            return
        scan = await asyncio.to_thread(scan_input, path, state.endpoint, env.settings.batch_max_lines)
        try:
            errors = all_errors(scan, await check_models(env.directory, scan, state.model_type))
        except Unavailable as exc:  # no worker yet: the models cannot be checked
            raise Retry(defer=2) from exc
        if errors:
            await env.store.transition(batch_id, [Status.VALIDATING], Status.FAILED,
                                       errors=orjson.dumps(errors).decode())
            await asyncio.to_thread(shutil.rmtree, env.folder(batch_id), True)
        elif await env.store.transition(batch_id, [Status.VALIDATING], Status.IN_PROGRESS, total=scan.total):
            await queue.run(batch_id)

    await _leased(ctx, batch_id, work)


async def run_batch(ctx: dict[str, Any], batch_id: str) -> None:
    env: BatchEnv = ctx["env"]
    queue: LifecycleQueue = ctx["queue"]
    outcome = "stopped"

    async def work(lease: Lease) -> None:
        nonlocal outcome
        state = await env.store.require(batch_id)
        if state.status == Status.IN_PROGRESS:
            outcome = await Driver(env, lease).run(SLICE_S)

    await _leased(ctx, batch_id, work)
    if outcome == "slice":
        raise Retry(defer=0)  # the next slice: same job id
    if outcome == "done" and await env.store.transition(batch_id, [Status.IN_PROGRESS], Status.FINALIZING):
        await queue.finalize(batch_id)


async def finalize_batch(ctx: dict[str, Any], batch_id: str) -> None:
    env: BatchEnv = ctx["env"]
    queue: LifecycleQueue = ctx["queue"]

    async def work(lease: Lease) -> None:
        state = await env.store.require(batch_id)
        expired = bool(state.expiring) or time.time() >= state.expires_at
        if state.final or (state.status in (Status.VALIDATING, Status.IN_PROGRESS) and not expired):
            return  # nothing to finish (or not yet)
        driver = Driver(env, lease)
        await driver.resync()
        to, code = _ending(Status(state.status))
        if code and "in_progress_at" in state.stamps:  # validated: its lines are known
            await driver.close_rest(code, UNFINISHED[code])
        ids = await driver.publish()
        allowed = [Status.CANCELLING, Status.FINALIZING, Status.IN_PROGRESS, Status.VALIDATING]
        if await env.store.transition(batch_id, allowed, to, **ids):
            await asyncio.to_thread(shutil.rmtree, env.folder(batch_id), True)
            await queue.forget(batch_id)

    await _leased(ctx, batch_id, work)


UNFINISHED = {
    "batch_cancelled": "The batch was cancelled before this request ran.",
    "batch_expired": "This request could not be executed before the completion window expired.",
}


def _ending(status: Status) -> tuple[Status, str]:
    """The final status of a batch being finalised, and the error code of its unfinished lines."""
    if status == Status.CANCELLING:
        return Status.CANCELLED, "batch_cancelled"
    if status == Status.FINALIZING:
        return Status.COMPLETED, ""
    return Status.EXPIRED, "batch_expired"


async def sweep_batches(ctx: dict[str, Any]) -> None:
    """Expire batches past their window; make sure every active batch has the job it needs."""
    env: BatchEnv = ctx["env"]
    queue: LifecycleQueue = ctx["queue"]
    for batch_id in await env.store.active():
        state = await env.store.get(batch_id)
        if state is None or state.final:
            await cast(Awaitable[int], env.redis.srem(keys.BATCH_ACTIVE, batch_id))
            continue
        live = state.status in (Status.VALIDATING, Status.IN_PROGRESS)
        if live and (state.expiring or time.time() >= state.expires_at):
            if not state.expiring:
                await env.store.set_fields(batch_id, expiring="1")
            await queue.stop(batch_id)
        elif state.status == Status.VALIDATING:
            await queue.validate(batch_id)
        elif state.status == Status.IN_PROGRESS:
            await queue.run(batch_id)
        else:
            await queue.finalize(batch_id)


def make_worker(env: BatchEnv, queue: LifecycleQueue) -> Worker:
    return Worker(
        functions=[func(validate_batch, timeout=JOB_TIMEOUT_S, max_tries=FOREVER),
                   func(run_batch, timeout=SLICE_S + 40, max_tries=FOREVER),
                   func(finalize_batch, timeout=JOB_TIMEOUT_S, max_tries=FOREVER)],
        cron_jobs=[cron(sweep_batches, name="sweep_batches", second=set(range(0, 60, SWEEP_S)),
                        run_at_startup=True, timeout=60)],
        redis_pool=queue.pool, queue_name=keys.ARQ_QUEUE, handle_signals=False, allow_abort_jobs=True,
        keep_result=0, max_jobs=MAX_JOBS, poll_delay=0.2, job_serializer=dumps, job_deserializer=loads,
        ctx={"env": env, "queue": queue}, log_results=False,
    )


async def supervise(worker: Worker) -> None:
    """Run the arq worker's loop until cancelled, restarting it after Redis errors."""
    while True:
        try:
            await worker.main()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("batch job worker: redis error %s; restarting", exc)
        except Exception:
            log.exception("batch job worker failed; restarting")
        await asyncio.sleep(1.0)
