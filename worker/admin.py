"""Admin commands from the API (and the CLI) to the worker, through Redis: load, unload, pin, unpin, rescan.

The API appends `load` and `unload` to one stream that every worker reads from where it last stopped
(no consumer group: each worker applies each command to its own models); commands older than the
worker are skipped. `llm-interface pull` and `rm` append `rescan`: the worker reads its models folder again
at once, not at its next periodic scan (LLM_MODELS_RESCAN_S). Pins live in a hash (`"1"` pinned, `"0"`
unpinned, overriding `LLM_PINNED_MODELS`), so a worker that starts later applies them too. Read once per heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis

from common import keys
from worker.scheduler import Scheduler

log = logging.getLogger(__name__)


class AdminCommands:
    def __init__(self, redis: Redis, scheduler: Scheduler, setting_pins: tuple[str, ...],
                 rescan: Callable[[], None] | None = None) -> None:
        self.redis = redis
        self.scheduler = scheduler
        self.setting_pins = set(setting_pins)
        self.rescan = rescan  # reads the models folder again and gives the scheduler the new catalog
        self._last_id = f"{int(time.time() * 1000)}-0"

    async def apply(self) -> None:
        pins = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(keys.PINS))
        on = {m.decode() for m, v in pins.items() if v == b"1"}
        off = {m.decode() for m, v in pins.items() if v != b"1"}
        self.scheduler.set_pins((self.setting_pins | on) - off)
        answer = await self.redis.xread({keys.ADMIN_STREAM: self._last_id}, count=100)
        for _, entries in answer:
            for entry_id, fields in entries:
                self._last_id = entry_id.decode()
                action, model_id = fields.get(b"action", b"").decode(), fields.get(b"model", b"").decode()
                log.info("admin: %s %s", action, model_id)
                if action == "rescan" and self.rescan is not None:
                    self.rescan()
                elif action == "load":
                    self.scheduler.preload(model_id)
                elif action == "unload" and not self.scheduler.drop(model_id):
                    log.info("admin: %s not unloaded (busy, or not in memory)", model_id)
