"""Domain errors and the one table that maps them to an HTTP status and an OpenAI error body.

Raised anywhere (API or worker); the API turns them into
`{"error": {"message", "type", "param", "code"}}` with the status below, and the worker sends
them back as an error message carrying the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ServiceError(Exception):
    status: ClassVar[int] = 500
    err_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "server_error"  # every error carries a code: clients branch on it

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def wire(self) -> dict[str, Any]:
        """The fields an error message carries from worker to API (see `from_wire`)."""
        return {"status": self.status, "message": self.message, "type": self.err_type,
                "code": self.code, "param": self.param}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param,
                          "code": self.code}}


class InvalidRequest(ServiceError):
    status = 400
    err_type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationFailed(ServiceError):
    status = 401
    err_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ServiceError):
    status = 404
    err_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class PayloadTooLarge(ServiceError):
    status = 413
    err_type = "invalid_request_error"
    default_code = "payload_too_large"


class ValidationFailed(ServiceError):
    """A body of the wrong shape: 422, as FastAPI's validation of a route's body or a batch line's."""

    status = 422
    err_type = "invalid_request_error"
    default_code = "validation_error"

    @classmethod
    def from_errors(cls, errors: Sequence[Mapping[str, Any]]) -> ValidationFailed:
        """From pydantic's error list: the first five `field: problem` and the first field as `param`."""
        locs = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors]
        message = "; ".join(f"{loc or 'body'}: {e.get('msg')}" for loc, e in zip(locs, errors[:5], strict=False))
        return cls(message or "invalid request", param=locs[0] or None if locs else None)


class PermissionDenied(ServiceError):
    """A known key that may not use this route."""

    status = 403
    err_type = "permission_error"
    default_code = "forbidden"


class MethodNotAllowed(ServiceError):
    status = 405
    err_type = "invalid_request_error"
    default_code = "method_not_allowed"


class CallerGone(ServiceError):
    """The caller hung up before its answer (nginx's 499): its job was cancelled; nobody reads this answer."""

    status = 499
    err_type = "client_closed_request"
    default_code = "client_disconnected"


class Overloaded(ServiceError):
    status = 429
    err_type = "rate_limit_error"
    default_code = "overloaded"


class Unavailable(ServiceError):
    status = 503
    err_type = "service_unavailable"
    default_code = "service_unavailable"


class DeadlineExceeded(ServiceError):
    status = 504
    err_type = "timeout"
    default_code = "deadline_exceeded"


class EngineFailure(ServiceError):
    status = 500
    err_type = "server_error"
    default_code = "engine_error"


_BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls
    for cls in (InvalidRequest, AuthenticationFailed, NotFound, PayloadTooLarge, Overloaded,
                Unavailable, DeadlineExceeded, EngineFailure)
}


def from_wire(body: dict[str, Any]) -> ServiceError:
    """Rebuild an error the worker sent (see `protocol.Message.error`)."""
    cls = _BY_STATUS.get(int(body.get("status", 500)), EngineFailure)
    return cls(str(body.get("message", "worker error")), param=body.get("param"), code=body.get("code"))
