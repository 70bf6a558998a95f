"""Every error the appliance raises on purpose: one hierarchy rooted at `ApplianceError`.

The HTTP layer maps these to status codes and the JSON error model; the CLI maps them to exit
codes. Never put a secret, a query parameter value or a result in a message, nor in `field`.
"""

from __future__ import annotations

from typing import Any


class ApplianceError(Exception):
    """Root of the hierarchy. `code` is a stable machine-readable word; `status` the HTTP status.

    Where the error is about one input: `field` names it in the API's own terms (`name`,
    `config.host`, `secrets.password`, `body`, `parameters[0].type`, `param.customer`; the scheme
    is in docs/queries.md, "Where an error points"), and `line` and `column` (1-based) place it
    in a query body's text. A field is a name the API knows (a key it takes, a declared
    parameter), never a value and never a key the caller made up.
    """

    status: int = 500
    code: str = "internal_error"
    exit_code: int = 1
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None,
                 line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if field is not None:
            self.field = field
        if line is not None:
            self.line = line
            self.column = column

    def response_headers(self) -> dict[str, str]:
        """Extra HTTP headers the error response carries (none by default)."""
        return {}

    def members(self) -> dict[str, Any]:
        """Extra members of the error object, beside code, message, field, line and column
        (none by default; `secret_in_query` lists its findings). Never a value."""
        return {}


# --- start-up and configuration -------------------------------------------------------------


class ConfigError(ApplianceError):
    """A setting is unknown or has a bad value. The message names the key."""

    code = "config_error"
    exit_code = 2

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class StateDirError(ApplianceError):
    """The state directory is missing, unsafe or unusable."""

    code = "state_dir_error"
    exit_code = 2


class StoreError(ApplianceError):
    """The configuration store cannot be opened or is not at a version we understand."""

    code = "store_error"
    status = 503


class StoreUnavailable(StoreError):
    """The store named by the settings cannot be reached or used: refused, unresolvable, TLS or
    authentication failed, not PostgreSQL, a schema newer than this appliance. At start it stops
    the process (exit 2, one line, never a password); while serving it is a 503 until the store
    is back (connections are made again by themselves)."""

    exit_code = 2


class TLSError(ApplianceError):
    """TLS material is missing, unreadable or invalid."""

    code = "tls_error"
    status = 503


# --- request errors (4xx) -------------------------------------------------------------------


class BadRequest(ApplianceError):
    status = 400
    code = "bad_request"


class Unauthorized(ApplianceError):
    status = 401
    code = "unauthorized"


class Forbidden(ApplianceError):
    status = 403
    code = "forbidden"


class NotFound(ApplianceError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApplianceError):
    status = 405
    code = "method_not_allowed"


class Conflict(ApplianceError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApplianceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApplianceError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(ApplianceError):
    status = 422
    code = "unprocessable"


class TooManyRequests(ApplianceError):
    status = 429
    code = "too_many_requests"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


# --- upstream and availability (5xx) --------------------------------------------------------


class UpstreamError(ApplianceError):
    status = 502
    code = "upstream_error"


class ServiceUnavailable(ApplianceError):
    status = 503
    code = "unavailable"


class UpstreamTimeout(ApplianceError):
    status = 504
    code = "timeout"
