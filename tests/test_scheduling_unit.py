"""The worker's Scheduler (worker/scheduler.py) in-process: the real policy, real engine objects (the
weightless no-op embedding engine), no Redis. What glues the policy to jobs and engines: grants, grouping,
parking and waking, refusals, a parked copy that fails to wake, cancelled waiters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from common.errors import ModelNotFound
from common.protocol import ModelType
from common.settings import Settings
from worker.engines.noop import NoopEngine
from worker.models import ModelManager
from worker.scheduler import Scheduler

EMB = ModelType.EMBEDDING


def noop_models(root: Path, *names: str) -> Path:
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}\n", encoding="utf-8")
        (folder / "llm-interface.json").write_text(
            json.dumps({"type": "embedding", "options": {"engine": "noop"}}), encoding="utf-8")
    return root


def scheduler(root: Path, **settings: object) -> Scheduler:
    manager = ModelManager(Settings(models_dir=root, device="cpu", model_cache_size=1, **settings))  # type: ignore[arg-type]
    manager.rescan()
    sched = Scheduler(manager.settings, manager)
    sched.refresh()
    return sched


async def serve(sched: Scheduler, job: str, model: str, order: list[str], since: float = 0.0) -> None:
    await sched.acquire(job, model, EMB, since)
    order.append(job)
    await asyncio.sleep(0.01)  # the job runs a little
    sched.release(job)


def test_interleaved_jobs_are_grouped_and_switches_park(tmp_path: Path) -> None:
    sched = scheduler(noop_models(tmp_path, "a", "b"))

    async def run() -> list[str]:
        order: list[str] = []
        jobs = [serve(sched, f"{m}{i}", m, order, since=i) for i, m in enumerate("ababab")]
        await asyncio.gather(*jobs)
        await sched.close()
        return order

    order = asyncio.run(run())
    assert [j[0] for j in order] == list("aaabbb")
    assert sched.counts["load"] == 2 and sched.counts["park"] >= 1


def test_a_parked_model_comes_back_warm_and_a_failed_wake_loads_it_from_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sched = scheduler(noop_models(tmp_path, "a", "b"))

    async def run() -> None:
        order: list[str] = []
        for job, model in (("1", "a"), ("2", "b"), ("3", "a")):
            await serve(sched, job, model, order)
        assert (sched.counts["load"], sched.counts["warm_load"]) == (2, 1)

        def broken(self: NoopEngine) -> None:
            raise RuntimeError("the copy is gone")

        monkeypatch.setattr(NoopEngine, "wake", broken)
        await serve(sched, "4", "b", order)  # b was parked: its wake fails, so it loads from disk
        assert (sched.counts["load"], sched.counts["warm_load"]) == (3, 1)
        assert order == ["1", "2", "3", "4"]
        await sched.close()

    asyncio.run(run())


def test_unknown_models_are_refused_and_cancelled_waiters_release_their_model(tmp_path: Path) -> None:
    sched = scheduler(noop_models(tmp_path, "a", "b"))

    async def run() -> None:
        with pytest.raises(ModelNotFound):
            await sched.acquire("x", "nope", EMB, 0.0)
        await sched.acquire("1", "a", EMB, 0.0)  # a is busy with job 1
        waiter = asyncio.create_task(sched.acquire("2", "b", EMB, 0.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # b waits: a switch never happens under a running job
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert sched.policy.status()["b"].waiting == 0
        sched.release("1")
        await asyncio.sleep(0.05)
        assert sched.states()["a"]["state"] == "loaded"  # nobody wants b any more: no switch
        await sched.close()

    asyncio.run(run())


def test_admin_drop_and_pins(tmp_path: Path) -> None:
    sched = scheduler(noop_models(tmp_path, "a", "b"))

    async def run() -> None:
        sched.set_pins({"b"})
        await asyncio.sleep(0.05)
        assert sched.states()["b"]["state"] == "loaded" and sched.states()["b"]["pinned"]
        assert sched.drop("b")
        await asyncio.sleep(0.05)
        assert sched.states()["b"]["state"] == "available" and not sched.states()["b"]["pinned"]
        assert not sched.drop("nope")
        await sched.close()

    asyncio.run(run())


def test_a_load_is_visible_while_it_runs_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """`loading_s` in the states (what /v1/models and the status page show) while the load runs; log lines for
    its start (size, placement), the job that waits for it, and its end (how long it took)."""
    sched = scheduler(noop_models(tmp_path, "a"))
    release = __import__("threading").Event()
    monkeypatch.setattr(NoopEngine, "load", lambda self: release.wait(10))

    async def run() -> dict[str, object]:
        job = asyncio.ensure_future(sched.acquire("j1", "a", EMB, 0.0))
        while sched.states()["a"]["state"] != "loading" or "loading_s" not in sched.states()["a"]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.15)
        during = sched.states()["a"]
        release.set()
        await job
        sched.release("j1")
        after = sched.states()["a"]
        await sched.close()
        return {"during": during, "after": after}

    with caplog.at_level("INFO", logger="worker.scheduler"):
        states = asyncio.run(run())
    during, after = states["during"], states["after"]
    assert isinstance(during, dict) and float(during["loading_s"]) > 0
    assert isinstance(after, dict) and after["state"] == "loaded" and "loading_s" not in after
    text = caplog.text
    assert "loading a (embedding" in text and "on cpu" in text
    assert "job j1 waits for a" in text and "loaded a in" in text
