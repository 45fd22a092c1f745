"""The service's Redis client (common/redis_client.py): a connection that the pool hands out with unread data on it,
or that the server closed, is made anew before the command is sent, so that no reply answers the wrong command."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.redis_client import connect
from tests.stack import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """Its own: the second test closes every other client's connection."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_a_reply_left_unread_never_answers_the_next_command(server: RedisServer) -> None:
    redis = connect(server.url)
    try:
        await redis.set("redis-client:k", b"value")
        pool = redis.connection_pool
        conn = await pool.get_connection("SET")
        await conn.send_command("SET", "redis-client:other", b"x")  # its "OK" is never read
        await asyncio.sleep(0.2)  # the reply has arrived
        await pool.release(conn)
        assert await redis.get("redis-client:k") == b"value"
        assert await redis.get("redis-client:other") == b"x"
    finally:
        await redis.aclose()


async def test_a_connection_the_server_closed_is_made_anew(server: RedisServer) -> None:
    redis = connect(server.url)
    try:
        await redis.client_setname("redis-client-test")
        assert await redis.ping()
        admin = connect(server.url)
        try:
            await admin.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
        finally:
            await admin.aclose()
        await asyncio.sleep(0.2)  # the close has arrived
        await redis.set("redis-client:after", b"1")
        assert await redis.get("redis-client:after") == b"1"
    finally:
        await redis.aclose()
