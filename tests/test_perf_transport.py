"""The worker's coalesced replies: one write (one Lua call) per event-loop turn, each stream in order, terminal
ones acknowledged; deltas sent without waiting, their failure raised by the job's next reply."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from common import keys
from common.protocol import DATA_FIELD, Job, Message, MessageKind
from common.redis_client import connect
from tests.stack import RedisServer
from worker.transport import Delivery, WorkerTransport, ensure_group


async def command_calls(redis: Redis) -> dict[str, int]:
    """How often Redis ran each command since its last CONFIG RESETSTAT (commands a script runs count too)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


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


async def test_replies_of_one_turn_share_one_write_and_keep_each_stream_in_order(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # its own: nothing else sends it commands
    server.start()
    redis = connect(server.url)
    transport = WorkerTransport(redis, f"w-{uuid.uuid4().hex[:6]}", result_ttl_s=60)
    stream = keys.job_stream("perf", f"m-{uuid.uuid4().hex[:6]}")
    try:
        jobs = await deliveries(redis, stream, transport.worker_id, 3)
        await transport.reply(jobs[0], delta(-1))  # loads the script
        await redis.config_resetstat()

        async def stream_of(d: Delivery) -> None:
            for i in range(3):
                await transport.reply(d, delta(i))
            transport.send(d, delta(3))  # not awaited: written with the terminal one, before it
            await transport.reply(d, Message(MessageKind.DONE, {}))

        await asyncio.gather(*(stream_of(d) for d in jobs))
        calls = await command_calls(redis)
        assert calls.get("evalsha", 0) + calls.get("eval", 0) <= 5  # 3 turns of deltas, the last ones in 1-2
        assert calls["xadd"] == 15
        assert calls["expire"] == 2 + 3  # once per stream while it runs (one before), and after the last message
        assert calls["xack"] == calls["xdel"] == 3
        for d in jobs:
            got = await read_all(redis, d.job.reply_to)
            assert [m.body.get("i") for m in got][-5:] == [0, 1, 2, 3, None] and got[-1].kind is MessageKind.DONE
            assert 0 < await redis.ttl(d.job.reply_to) <= 60
        assert (await redis.xpending(stream, keys.WORKER_GROUP))["pending"] == 0
        assert await redis.xlen(stream) == 0
    finally:
        await redis.aclose()
        server.stop()


def unreachable(job_id: str) -> tuple[Redis, WorkerTransport, Delivery]:
    """A transport whose Redis is never there, and a job for it."""
    redis = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    job = Job(id=job_id, kind="perf", model="m", reply_to=keys.result_stream(job_id), payload={})
    return redis, WorkerTransport(redis, "w-down", result_ttl_s=60), Delivery(keys.job_stream("perf", "m"), "1-0", job)


async def test_a_failed_write_reaches_every_caller_of_its_batch() -> None:
    redis, transport, delivery = unreachable("x")
    results = await asyncio.gather(transport.reply(delivery, delta(0)), transport.reply(delivery, delta(1)),
                                   return_exceptions=True)
    assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results)
    await redis.aclose()


async def test_after_a_lost_delta_the_answer_fails_and_the_error_reaches_the_caller(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    redis = connect(server.url)
    transport = WorkerTransport(redis, f"w-{uuid.uuid4().hex[:6]}", result_ttl_s=60)
    stream = keys.job_stream("perf", f"m-{uuid.uuid4().hex[:6]}")
    try:
        [job] = await deliveries(redis, stream, transport.worker_id, 1)
        server.stop()  # Redis away while a delta is on its way
        transport.send(job, delta(0))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if transport._lost:
                break
        server.start()
        try:
            await transport.reply(job, Message(MessageKind.DONE, {}))  # a gapped answer is never sent
            raise AssertionError("the lost delta was not raised")
        except (RedisConnectionError, OSError):
            pass
        await transport.reply(job, Message(MessageKind.ERROR, {"status": 503}))  # the caller learns it
        got = await read_all(redis, job.job.reply_to)
        assert [m.kind for m in got] == [MessageKind.ERROR]
    finally:
        await redis.aclose()
        server.stop()


async def test_a_lost_delta_is_raised_by_the_jobs_next_reply() -> None:
    redis, transport, delivery = unreachable("y")
    transport.send(delivery, delta(0))  # returns at once; its write fails in the background
    for _ in range(100):
        await asyncio.sleep(0.05)
        try:
            transport.send(delivery, delta(1))
        except (RedisConnectionError, OSError):
            break
    else:
        raise AssertionError("the failed write was never raised")
    await redis.aclose()
