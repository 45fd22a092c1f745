"""Request body size limit: 413 with the OpenAI envelope before a too-large body is parsed."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from common.errors import PayloadTooLarge


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 (declared or streamed size) before anything
    parses it, on every route but the `exempt` ones (uploads, which enforce their own, larger limit as the
    file streams to disk)."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:  # read the body (Starlette would buffer it anyway), counting as it comes
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"the request body is larger than {self.max_bytes} bytes")
        await error_response(exc, headers={"Connection": "close"}, path=scope["path"])(scope, receive, send)
