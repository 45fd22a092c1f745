"""Bearer-token auth on every route but the health probes and the status page's static shell (they hold no data).

`LLM_API_KEYS` (comma-separated) guard every route; `LLM_ADMIN_API_KEYS` guard `/admin/` routes and
open the others too. No API keys: the API is open, and says so loudly at start. An ordinary key on an admin
route is known but not allowed: 403 (no key or an unknown one: 401). Admin routes with API keys set but no
admin keys: refused (403), never opened to ordinary keys.
"""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from common.errors import AuthenticationFailed, PermissionDenied, ServiceError
from common.settings import Settings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/", "/favicon.ico"})
ADMIN_PREFIXES = ("/admin/", "/v1/admin/")


def _keys(raw: str) -> tuple[bytes, ...]:
    return tuple(k.strip().encode() for k in raw.split(",") if k.strip())


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    return any(hmac.compare_digest(token, key) for key in keys)


class BearerAuth:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.api_keys = _keys(settings.api_keys)
        self.admin_keys = _keys(settings.admin_api_keys)
        if not self.api_keys:
            log.warning("!!! LLM_API_KEYS is not set: the API is open to anyone who can reach %s:%s !!!",
                        settings.host, settings.port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        problem = self._check(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(problem, AuthenticationFailed) else None
        await error_response(problem, headers, scope["path"])(scope, receive, send)

    def _check(self, scope: Scope) -> ServiceError | None:
        admin = scope["path"].startswith(ADMIN_PREFIXES)
        if admin and not self.admin_keys:
            return None if not self.api_keys else PermissionDenied("admin routes need LLM_ADMIN_API_KEYS to be set")
        if not admin and not self.api_keys:
            return None
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token:  # Anthropic's clients send the key as `x-api-key`
            scheme, token = b"bearer", headers.get(b"x-api-key", b"")
        if not token.strip():
            return AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>' (or 'x-api-key')")
        token = token.strip()
        if _matches(token, self.admin_keys if admin else self.api_keys + self.admin_keys):
            return None
        if admin and _matches(token, self.api_keys):
            return PermissionDenied("this key may not use admin routes (they need one of LLM_ADMIN_API_KEYS)")
        return AuthenticationFailed("invalid API key")
