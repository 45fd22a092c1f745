"""One blocking read loop per API process over every open per-request result stream.

Each request opens a subscription (an asyncio queue) before its job is enqueued. The loop XREADs
all open result streams plus this process's wake stream; enqueueing a job also appends to the wake
stream, so a blocked read returns at once and the next read includes the new result stream.
Streams keep their entries, so a message written before the loop reads it is never lost. A stream read to its
terminal message is deleted in the same round trip as the loop's next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common import keys
from common.protocol import DATA_FIELD, Message, WireError

log = logging.getLogger(__name__)

BLOCK_MS = 5000
READ_COUNT = 1000


class ResultRouter:
    def __init__(self, redis: Redis, api_id: str) -> None:
        self.redis = redis  # a connection of its own: this loop blocks on it
        self.api_id = api_id
        self.wake_key = keys.wake_stream(api_id)
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._last: dict[str, str] = {}
        self._wake_last = "$"
        self._finished: list[str] = []  # result streams read to their terminal message, to delete
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def open(self, request_id: str) -> asyncio.Queue[Message]:
        stream = keys.result_stream(request_id)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues[stream] = queue
        self._last[stream] = "0"
        return queue

    def close(self, request_id: str) -> None:
        stream = keys.result_stream(request_id)
        self._queues.pop(stream, None)
        self._last.pop(stream, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="result-router")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self._read_once()
                self.healthy = True
            except (RedisError, OSError) as exc:
                self.healthy = False
                log.warning("result loop: redis error %s; retrying", exc)
                await asyncio.sleep(0.5)

    async def _read_once(self) -> None:
        streams: dict[Any, Any] = {self.wake_key: self._wake_last, **self._last}
        if self._finished:  # the streams answered in full last time, deleted in the same round trip as this read
            answered, self._finished = self._finished, []  # on an error their expiry deletes them
            pipe = self.redis.pipeline(transaction=False)
            pipe.unlink(*answered)
            pipe.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            reply = (await pipe.execute())[1]
        else:
            reply = await self.redis.xread(streams, count=READ_COUNT, block=BLOCK_MS)
        finished: list[str] = []
        for raw_stream, entries in reply or []:
            stream = raw_stream.decode()
            if stream == self.wake_key:
                self._wake_last = entries[-1][0].decode()
                continue
            if stream not in self._last:
                continue  # closed while we were reading
            self._last[stream] = entries[-1][0].decode()
            if self._deliver(stream, entries):
                finished.append(stream)
        for stream in finished:
            self._last.pop(stream, None)
        self._finished = finished

    def _deliver(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> bool:
        """Hand messages to the stream's subscriber; True once it got a terminal one."""
        queue = self._queues.get(stream)
        for _entry_id, fields in entries:
            try:
                message = Message.decode(fields[DATA_FIELD])
            except (WireError, KeyError) as exc:
                log.error("bad message on %s: %s", stream, exc)
                continue
            if queue is not None:
                queue.put_nowait(message)
            if message.terminal:
                return True
        return False
