"""The one place where exceptions become HTTP responses: the status from common/errors.py's table, the body in the
envelope of the API the route speaks (OpenAI's, but Cohere's on Cohere's routes)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import (
    EngineFailure,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    ServiceError,
    ValidationFailed,
)

log = logging.getLogger(__name__)


Envelope = Callable[[ServiceError], dict[str, Any]]


def openai_envelope(exc: ServiceError) -> dict[str, Any]:
    return exc.body()  # {"error": {"message", "type", "param", "code"}}


def cohere_envelope(exc: ServiceError) -> dict[str, Any]:
    return {"message": exc.message}  # what Cohere's API answers, and its SDK reads


# Anthropic's error types, by HTTP status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
                   429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_envelope(exc: ServiceError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(exc.status, "api_error"), "message": exc.message}}


# Routes whose clients expect another API's error body (exact paths); every other path answers OpenAI's.
ENVELOPES: dict[str, Envelope] = {"/v1/embed": cohere_envelope, "/v2/embed": cohere_envelope,
                                  "/v1/messages": anthropic_envelope}


def error_response(exc: ServiceError, headers: dict[str, str] | None = None, path: str = "") -> Response:
    """The error's status and the envelope of the API `path` speaks; 429s say when to retry."""
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": "1", **(headers or {})}
    body = ENVELOPES.get(path, openai_envelope)(exc)
    return Response(orjson.dumps(body), status_code=exc.status, media_type="application/json", headers=headers)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc, path=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(ValidationFailed.from_errors(exc.errors()), path=request.url.path)


_BY_HTTP_STATUS: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own (an unknown path, a wrong method, an unreadable body) in the same envelope;
    any other status they raise is answered as a 400."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:  # no route matched (a missing thing of ours is a ServiceError, not this)
        what = f"{request.method} {request.url.path}"
        error: ServiceError = NotFound(f"Unsupported endpoint: {what} is not an endpoint of this server",
                                       code="unsupported_endpoint")
    else:
        error = _BY_HTTP_STATUS.get(exc.status_code, InvalidRequest)(str(exc.detail))
    return error_response(error, headers=getattr(exc, "headers", None), path=request.url.path)


def _internal_error(path: str) -> Response:
    return error_response(EngineFailure("internal server error", code="internal_error"), path=path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return _internal_error(request.url.path)


class CatchAll:
    """ASGI middleware: a bug's exception becomes a 500 in the OpenAI envelope here, and is not raised on.
    (Starlette's outermost error middleware re-raises after answering, and uvicorn then drops the
    connection: a client's keep-alive connection must survive our faults too.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:  # a stream that broke half-way: nothing more can be said on it
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await _internal_error(scope.get("path", ""))(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
