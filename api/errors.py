"""The one place where exceptions become HTTP responses with the OpenAI error envelope."""

from __future__ import annotations

import logging

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


def error_response(exc: ServiceError, headers: dict[str, str] | None = None) -> Response:
    """The error's status and OpenAI envelope (`ServiceError.body`); 429s say when to retry."""
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": "1", **(headers or {})}
    return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=headers)


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(ValidationFailed.from_errors(exc.errors()))


_BY_HTTP_STATUS: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed}


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own (an unknown path, a wrong method, an unreadable body) in the same envelope;
    any other status they raise is answered as a 400."""
    assert isinstance(exc, HTTPException)
    error = _BY_HTTP_STATUS.get(exc.status_code, InvalidRequest)(str(exc.detail))
    return error_response(error, headers=getattr(exc, "headers", None))


def _internal_error() -> Response:
    return error_response(EngineFailure("internal server error", code="internal_error"))


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return _internal_error()


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
            await _internal_error()(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
