"""The one way this service opens a Redis client: redis-py's asyncio client, with commands packed by hiredis.

redis-py's asyncio connections pack every command in Python (hiredis only parses replies there): at 64 chat
streams that was the largest share of the worker's event loop (one reply call per engine step with a few
hundred arguments: 0.35 ms in Python, 0.1 ms in hiredis). Anything hiredis cannot pack (None, booleans: redis-py
refuses them with its own error) goes through redis-py's packer.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection


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
