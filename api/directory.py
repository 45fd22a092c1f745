"""The models the API can route to: the union of the catalogs that live workers publish to Redis.

The API never reads the models folder (it may run on another host); workers heart-beat their
discovered catalog with an expiry. Read with a short cache so a request costs no extra round trip.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common import keys
from common.discovery import ModelInfo
from common.errors import InvalidRequest, ModelNotFound, Unavailable
from common.protocol import ModelType

CACHE_S = 1.0


@dataclass
class Snapshot:
    workers: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # model id -> state, error, placement, jobs
    holders: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # model id -> [{worker, state}]
    taken_at: float = 0.0


class ModelDirectory:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._snapshot = Snapshot()
        # Models seen served before: while every worker is down (a restart), their jobs still queue.
        self._known: dict[str, ModelInfo] = {}

    async def snapshot(self, max_age_s: float = CACHE_S) -> Snapshot:
        if time.monotonic() - self._snapshot.taken_at > max_age_s:
            try:
                self._snapshot = await self._read()
                self._known.update(self._snapshot.models)
            except (RedisError, OSError) as exc:
                raise Unavailable(f"Redis is unreachable: {exc}") from exc
        return self._snapshot

    async def _read(self) -> Snapshot:
        members = await cast(Awaitable[set[bytes]], self.redis.smembers(keys.WORKERS_SET))
        ids = sorted(x.decode() for x in members)
        records = await self.redis.mget([keys.worker_key(i) for i in ids]) if ids else []
        snap = Snapshot(taken_at=time.monotonic())
        dead = [i for i, raw in zip(ids, records, strict=True) if raw is None]
        if dead:
            await cast(Awaitable[int], self.redis.srem(keys.WORKERS_SET, *dead))
        for raw in records:
            if raw is None:
                continue
            record = msgpack.unpackb(raw, raw=False)
            snap.workers.append({"id": record["id"], "types": record["types"], "ts_ms": record["ts_ms"],
                                 "stats": record.get("stats", {})})
            for model in record["models"]:
                info = ModelInfo.from_dict(model)
                snap.models.setdefault(info.id, info)
            snap.problems.extend(record.get("problems", []))
            for model_id, state in record.get("states", {}).items():
                if _rank(state) >= _rank(snap.states.get(model_id)):  # the most useful worker's view wins
                    snap.states[model_id] = state
                if state.get("state") in HELD:
                    snap.holders.setdefault(model_id, []).append({"worker": record["id"], "state": state["state"]})
        return snap

    async def resolve(self, model_id: str, model_type: ModelType) -> ModelInfo:
        """The model a request names, checked against the endpoint's model type."""
        snap = await self.snapshot()
        if model_id not in snap.models:
            snap = await self.snapshot(max_age_s=0.0)  # a worker may have just come up
        info = snap.models.get(model_id) or (None if snap.workers else self._known.get(model_id))
        if info is None:
            if not snap.workers:
                raise Unavailable("no worker is running: no models are available yet")
            raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
        info.check_type(model_type)
        return info

    async def default_model(self, model_type: ModelType) -> str:
        """The model a request that names none gets (TEI clients): the only one of its type, else a 400."""
        snap = await self.snapshot()
        ids = sorted(m.id for m in snap.models.values() if m.type is model_type)
        if len(ids) == 1:
            return ids[0]
        if not snap.workers:
            raise Unavailable("no worker is running: no models are available yet")
        served = ", ".join(ids) or "none"
        raise InvalidRequest(f"'model' is required unless exactly one {model_type} model is served ({served})",
                             param="model", code="model_required")


_RANK = {"loaded": 5, "loading": 4, "parked": 3, "unloading": 2, "failed": 1}
HELD = frozenset({"loaded", "loading", "parked"})  # a worker holds the model (or a warm copy of it)


def _rank(state: dict[str, Any] | None) -> int:
    return -1 if state is None else _RANK.get(str(state.get("state")), 0)
