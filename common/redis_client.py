"""The one way this service opens a Redis client: redis-py's asyncio client, with commands packed by hiredis.

redis-py's asyncio connections pack every command in Python (hiredis only parses replies there): at 64 chat
streams that was the largest share of the worker's event loop (one reply call per engine step with a few
hundred arguments: 0.35 ms in Python, 0.1 ms in hiredis). Anything hiredis cannot pack (None, booleans: redis-py
refuses them with its own error) goes through redis-py's packer.

Before each command the pool checks that the connection it hands out holds no unread data (a reply left behind
would answer the wrong command). redis-py looks with a socket read under a zero timeout: a task that suspends and
is cancelled, an extra event-loop turn per command. Here it looks at what asyncio has already received, which is
all that read could see: 90 against 55 us of client CPU per GET on the 2-core machine (uvloop, 32 tasks).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError


class _HiredisPacking(AbstractConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str):  # "XGROUP CREATE": redis-py sends multi-word commands as one string
            args = (*command.encode().split(), *args[1:])
        elif isinstance(command, bytes) and b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)

    async def can_read_destructive(self) -> bool:
        """Data waiting on a connection about to be handed out (True: the pool reconnects it); see the module doc."""
        parser = self._parser
        stream, reader = getattr(parser, "_stream", None), getattr(parser, "_reader", None)
        if not isinstance(parser, _AsyncHiredisParser) or stream is None or reader is None:
            return bool(await super().can_read_destructive())  # type: ignore[no-untyped-call]
        if not parser._connected:
            raise RedisConnectionError("the connection is closed")
        if reader.gets() is not NOT_ENOUGH_DATA:
            return True
        return bool(stream._buffer) or stream.at_eof()


class _Tcp(_HiredisPacking, Connection):
    pass


class _Ssl(_HiredisPacking, SSLConnection):
    pass


class _Unix(_HiredisPacking, UnixDomainSocketConnection):
    pass


_PACKED: dict[type, type] = {Connection: _Tcp, SSLConnection: _Ssl, UnixDomainSocketConnection: _Unix}


def connect(url: str, **kwargs: Any) -> Redis:
    """`Redis.from_url(url, **kwargs)` whose connections pack with hiredis."""
    client: Redis = Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return client
