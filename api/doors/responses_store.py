"""Stored responses (`store: true`, the default): the response object and the chat conversation that led to it,
one Redis key each with an expiry, so that `previous_response_id` continues it from any API replica."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from common import keys
from common.errors import InvalidRequest, NotFound


class ResponseStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def save(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        """Keep the response, and the chat messages a follow-up continues (its own turn included)."""
        record = {"response": response, "messages": messages}
        await self.redis.set(keys.response_key(response["id"]), orjson.dumps(record), ex=self.ttl_s)

    async def _record(self, response_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.response_key(response_id))
        return None if raw is None else dict(orjson.loads(raw))

    async def get(self, response_id: str) -> dict[str, Any]:
        record = await self._record(response_id)
        if record is None:
            raise NotFound(f"No response with id '{response_id}' (never stored, or expired)",
                           param="response_id", code="response_not_found")
        return dict(record["response"])

    async def history(self, previous_id: str | None) -> list[dict[str, Any]]:
        """The chat messages a follow-up of `previous_id` continues (none without one)."""
        if previous_id is None:
            return []
        record = await self._record(previous_id)
        if record is None:
            raise InvalidRequest(f"Previous response with id '{previous_id}' not found (never stored, or expired)",
                                 param="previous_response_id", code="previous_response_not_found")
        return list(record["messages"])

    async def delete(self, response_id: str) -> None:
        if not await self.redis.delete(keys.response_key(response_id)):
            raise NotFound(f"No response with id '{response_id}'", param="response_id", code="response_not_found")
