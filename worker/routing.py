"""Which models' job streams this worker reads, decided every `ROUTE_S` by the pure rule of
worker/policy/cluster.py from the same state every worker sees: the live workers' heartbeats, the jobs
waiting in Redis and the load leases. This module gathers that view, takes the load leases the rule claims
(a load no other worker may start meanwhile), keeps them while the load runs, and hands the result to the
transport (what to read) and to the scheduler (which models other workers hold).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common import keys
from common.queues import backlogs, now_ms
from common.settings import Settings
from worker.models import ModelManager
from worker.policy.cluster import ClusterView, ModelOnWorker, QueueView, WorkerView, plan_reading
from worker.scheduler import Scheduler
from worker.transport import WorkerTransport

log = logging.getLogger(__name__)

ROUTE_S = 0.2  # how often the reading plan is made again (a cold model's first job waits at most this long)
LEASE_BEATS = 5  # a load lease outlives this many heartbeats unless refreshed (the load still runs)
CLAIM_AFTER_BEATS = 3  # a cold model waiting this long may be claimed by any worker that can serve it
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def worker_view(record: dict[str, Any]) -> WorkerView:
    """A worker's heartbeat record as the rule sees it."""
    states = record.get("states") or {}
    models = {}
    for info in record.get("models", []):
        state = states.get(info["id"]) or {}
        placement = state.get("placement") or {}
        models[info["id"]] = ModelOnWorker(
            str(info["type"]), str(state.get("state", "available")), int(placement.get("gpu_bytes") or 0),
            int(state.get("waiting", 0)) + int(state.get("running", 0)), float(state.get("oldest_s", 0.0)))
    capacity = record.get("capacity") or {}
    budget = capacity.get("budget_bytes")
    return WorkerView(str(record["id"]), models, None if budget is None else int(budget),
                      int(capacity.get("cache_size", 1)))


class Router:
    def __init__(self, redis: Redis, transport: WorkerTransport, scheduler: Scheduler, models: ModelManager,
                 settings: Settings) -> None:
        self.redis = redis
        self.transport = transport
        self.scheduler = scheduler
        self.models = models
        self.settings = settings
        self.me = transport.worker_id
        self.leases: dict[str, float] = {}  # models whose load lease we hold -> when we took it (monotonic)
        self._loaded_at: dict[str, float] = {}  # leased models seen loaded here -> since when
        self._release = redis.register_script(_RELEASE)
        self.claims = 0  # loads claimed (cold models and replicas), for the gauges

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except (RedisError, OSError) as exc:  # Redis away: keep reading what we read, look again soon
                log.warning("routing failed (%s); retrying", exc)
            await asyncio.sleep(ROUTE_S)

    async def step(self) -> None:
        view = await self.view()
        beat = self.settings.worker_heartbeat_s
        plan = plan_reading(view, self.me, self.settings.replica_after_s, CLAIM_AFTER_BEATS * beat)
        read = set(plan.read)
        for model, why in plan.claims.items():
            if await self.redis.set(keys.load_lease(model), self.me, nx=True, px=int(LEASE_BEATS * beat * 1000)):
                log.info("claimed the load of %s (%s)", model, why)
                self.claims += 1
                self.leases[model] = time.monotonic()
                read.add(model)
        await self._keep_leases()
        catalog = self.models.catalog.models
        self.transport.set_reading([(str(catalog[m].type), m) for m in read if m in catalog])
        self.scheduler.set_elsewhere(frozenset(m for w in view.workers.values() if w.id != self.me
                                               for m in w.models if w.holds(m)))

    async def _keep_leases(self) -> None:
        """Refresh the leases of loads to come or running here: just claimed (its first jobs may not be read yet),
        jobs of the model held here (being prepared, or waiting for the load), loading, or loaded for less than a
        heartbeat (the others learn it from the next one). Give back the others (loaded and known, or given up)."""
        states = self.scheduler.states()
        beat = self.settings.worker_heartbeat_s
        now = time.monotonic()
        for model, claimed in sorted(self.leases.items()):
            state = (states.get(model) or {}).get("state")
            loaded_at = self._loaded_at.setdefault(model, now) if state == "loaded" else None
            keep = (now - claimed < 2 * beat or state == "loading" or (loaded_at is not None and now - loaded_at < beat)
                    or (state != "loaded" and self.transport.holding(model)))
            if keep:
                await self.redis.pexpire(keys.load_lease(model), int(LEASE_BEATS * beat * 1000))
            else:
                await self._release(keys=[keys.load_lease(model)], args=[self.me])
                del self.leases[model]
                self._loaded_at.pop(model, None)

    async def view(self) -> ClusterView:
        """The live workers (this one as it is now), the backlog of the models this worker can serve, the leases."""
        ids = sorted(x.decode() for x in await cast(Awaitable[set[bytes]], self.redis.smembers(keys.WORKERS_SET)))
        others = [i for i in ids if i != self.me]
        records = await self.redis.mget([keys.worker_key(i) for i in others]) if others else []
        workers = {i: worker_view(msgpack.unpackb(raw, raw=False)) for i, raw in zip(others, records, strict=True)
                   if raw is not None}
        catalog = self.models.catalog.models
        workers[self.me] = worker_view({"id": self.me, "models": [m.to_dict() for m in catalog.values()],
                                        "states": self.scheduler.states(), "capacity": self.scheduler.capacity()})
        models = sorted(catalog)
        streams = {m: keys.job_streams(str(catalog[m].type), m) for m in models}
        found = await backlogs(self.redis, [s for pair in streams.values() for s in pair])
        now = await now_ms(self.redis)
        queues = {}
        for model, pair in streams.items():
            waiting = sum(found[s].waiting for s in pair)
            oldest = max((found[s].oldest_waiting_s(now) or 0.0 for s in pair), default=0.0)
            queues[model] = QueueView(waiting, oldest)
        held = await self.redis.mget([keys.load_lease(m) for m in models]) if models else []
        leases = {m: raw.decode() for m, raw in zip(models, held, strict=True) if raw is not None}
        return ClusterView(workers, queues, leases)
