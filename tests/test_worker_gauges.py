"""The worker never dies of a gauge: an engine whose statistics call raises (vLLM 0.11's AsyncLLM had no
`get_num_unfinished_requests`) is logged and left out of the heartbeat, which goes on beating."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
from redis.asyncio import Redis

from common import keys
from common.discovery import ModelInfo
from common.protocol import ModelType
from common.settings import Settings
from tests.stack import RedisServer
from worker.engines.chat_base import ChatEngine, Delta, GenerationParams
from worker.main import Worker


class GaugeBrokenEngine(ChatEngine):
    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def running(self) -> int:
        raise AttributeError("'AsyncLLM' object has no attribute 'get_num_unfinished_requests'")

    async def generate(self, request_id: str, prompt: list[int], params: GenerationParams) -> AsyncIterator[Delta]:
        yield Delta("", 0, None, "stop")


async def test_a_failing_gauge_is_left_out_and_the_heartbeat_goes_on(redis_server: RedisServer,
                                                                     tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_server.url, models_dir=tmp_path, worker_id="gauge-test",
                        worker_heartbeat_s=0.05, device="cpu")
    redis = Redis.from_url(redis_server.url)
    worker = Worker(settings, redis)
    info = ModelInfo("broken", ModelType.CHAT, str(tmp_path), 0, None, None, None, True)
    worker.scheduler.engines["broken"] = GaugeBrokenEngine(info, settings)
    await redis.delete(keys.worker_key("gauge-test"))
    beating = asyncio.create_task(worker._heartbeat())
    try:
        await asyncio.sleep(0.5)
        assert not beating.done()  # still beating after ten beats with a broken gauge
        raw = await redis.get(keys.worker_key("gauge-test"))
        assert raw is not None
        stats = msgpack.unpackb(raw, raw=False)["stats"]
        assert "model_loads" in stats and "reclaimed" in stats  # the other sources' gauges are there
        assert "chat_sequences" not in stats  # the broken source's are left out
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await redis.delete(keys.worker_key("gauge-test"))
        await redis.aclose()
