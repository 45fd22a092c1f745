"""`llm-interface worker-health`: exit 0 while a worker on this host heart-beats in Redis (LLM_REDIS_URL, or the
embedded one of `serve` in the one-container image).

A worker publishes `llm:worker:{id}` with an expiry of three heartbeats (`LLM_WORKER_HEARTBEAT_S`), so
the key exists only while the worker's loop runs and reaches Redis. The id is `LLM_WORKER_ID` when set,
else `{hostname}-{pid}`: the check looks for any worker of this host name (one per container).
"""

from __future__ import annotations

import re
import socket

from redis import Redis
from redis.exceptions import RedisError

from cli.embedded_redis import running_url
from common import keys
from common.settings import Settings


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def redis_url(settings: Settings) -> str:
    """LLM_REDIS_URL; without it, the embedded Redis of `serve` (the one-container image), else the default."""
    if settings.redis_url is None:
        embedded = running_url(settings.data_dir / "redis")
        if embedded is not None:
            return embedded
    return settings.effective_redis_url


def worker_heartbeats(settings: Settings, hostname: str | None = None) -> list[str]:
    """The heartbeat keys in Redis that belong to this host's worker (or to `LLM_WORKER_ID`)."""
    redis = Redis.from_url(redis_url(settings), socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        if settings.worker_id:
            key = keys.worker_key(settings.worker_id)
            return [key] if redis.exists(key) else []
        pattern = keys.worker_key(_glob_escape(hostname or socket.gethostname()) + "-*")
        return sorted(k.decode() for k in redis.scan_iter(match=pattern, count=1000))
    finally:
        redis.close()


def main(settings: Settings) -> int:
    try:
        found = worker_heartbeats(settings)
    except (RedisError, OSError) as exc:
        print(f"unhealthy: Redis is unreachable: {exc}")
        return 1
    if not found:
        print("unhealthy: no worker heartbeat from this host in Redis")
        return 1
    print("healthy: " + ", ".join(found))
    return 0
