"""One exception tree; each class maps to one HTTP status and OpenAI error JSON."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field the error is about, as OpenAI names it

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class TooManyRequests(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BackendError(GatewayError):
    """The backend failed or died while serving the request."""

    status = 502
    type = "backend_error"
    code = "bad_gateway"


class NotDelivered(BackendError):
    """The backend went away before the request reached it: safe to send again once the
    model is back, since nothing was generated."""


class BackendUnavailable(GatewayError):
    """The backend could not be started (or is held failed), or shutdown cancelled it."""

    status = 503
    type = "backend_unavailable"
    code = "service_unavailable"


class Conflict(GatewayError):
    """The model is not in a state the operation can act on (e.g. a sleep of a stopped model)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class BackendTimeout(GatewayError):
    """The backend did not become healthy, or did not answer, in time."""

    status = 504
    type = "timeout_error"
    code = "gateway_timeout"
