"""The worker's coalesced replies: one MULTI per event-loop turn, each stream in order, terminal ones acked."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from common import keys
from common.protocol import DATA_FIELD, Job, Message, MessageKind
from tests.stack import RedisServer
from worker.transport import Delivery, WorkerTransport, ensure_group


class CountingRedis(Redis):
    """Records the commands of every MULTI it sends."""

    sent: list[list[str]]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def recorded(raise_on_error: bool = True) -> Any:
            self.sent.append([str(args[0]).upper() for args, _ in pipe.command_stack])
            return await execute(raise_on_error)

        pipe.execute = recorded  # type: ignore[method-assign]
        return pipe


def delta(i: int) -> Message:
    return Message(MessageKind.DELTA, {"i": i})


async def deliveries(redis: Redis, stream: str, consumer: str, count: int) -> list[Delivery]:
    """`count` jobs on `stream`, read (so pending) by `consumer`."""
    await ensure_group(redis, stream)
    for _ in range(count):
        request = uuid.uuid4().hex
        job = Job(id=request, kind="perf", model="m", reply_to=keys.result_stream(request), payload={})
        await redis.xadd(stream, {DATA_FIELD: job.encode()})
    reply = await redis.xreadgroup(keys.WORKER_GROUP, consumer, {stream: ">"}, count=count)
    return [Delivery(stream, entry_id.decode(), Job.decode(fields[DATA_FIELD])) for entry_id, fields in reply[0][1]]


async def read_all(redis: Redis, stream: str) -> list[Message]:
    return [Message.decode(fields[DATA_FIELD]) for _, fields in await redis.xrange(stream)]


async def test_replies_of_one_turn_share_one_multi_and_keep_each_stream_in_order(redis_server: RedisServer) -> None:
    redis = CountingRedis.from_url(redis_server.url)
    redis.sent = []
    transport = WorkerTransport(redis, f"w-{uuid.uuid4().hex[:6]}", result_ttl_s=60)
    stream = keys.job_stream("perf", f"m-{uuid.uuid4().hex[:6]}")
    jobs: list[Delivery] = []
    try:
        jobs = await deliveries(redis, stream, transport.worker_id, 3)
        redis.sent.clear()

        async def stream_of(d: Delivery) -> None:
            for i in range(3):
                await transport.reply(d, delta(i))
            await transport.reply(d, Message(MessageKind.DONE, {}))

        await asyncio.gather(*(stream_of(d) for d in jobs))
        assert [cmds.count("XADD") for cmds in redis.sent[:3]] == [3, 3, 3]  # one MULTI per step for all jobs
        assert [cmds.count("EXPIRE") for cmds in redis.sent[:3]] == [3, 0, 0]  # once per stream while it runs
        finals = redis.sent[3:]  # the first written at once, the others of that turn together
        assert len(finals) <= 2 and sum(cmds.count("XADD") for cmds in finals) == 3
        assert sum(cmds.count("EXPIRE") for cmds in finals) == 3  # a full expiry after the last message
        assert sum(cmds.count("XACK") for cmds in finals) == 3
        for d in jobs:
            got = await read_all(redis, d.job.reply_to)
            assert [m.body.get("i") for m in got] == [0, 1, 2, None] and got[-1].kind is MessageKind.DONE
            assert 0 < await redis.ttl(d.job.reply_to) <= 60
        assert (await redis.xpending(stream, keys.WORKER_GROUP))["pending"] == 0
        assert await redis.xlen(stream) == 0
    finally:
        await redis.delete(stream, *(d.job.reply_to for d in jobs))
        await redis.aclose()


async def test_a_failed_write_reaches_every_caller_of_its_batch() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    transport = WorkerTransport(redis, "w-down", result_ttl_s=60)
    job = Job(id="x", kind="perf", model="m", reply_to=keys.result_stream("x"), payload={})
    delivery = Delivery(keys.job_stream("perf", "m"), "1-0", job)
    results = await asyncio.gather(transport.reply(delivery, delta(0)), transport.reply(delivery, delta(1)),
                                   return_exceptions=True)
    assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results)
    await redis.aclose()
