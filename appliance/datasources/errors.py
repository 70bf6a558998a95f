"""What a datasource can do wrong, as the appliance's errors: unreachable, refused credentials, TLS,
timeout, a failed statement, an oversized answer.

Owns the error classes and their codes. A message names the datasource and never holds a
credential, a parameter value or a result; driver messages are reduced to what is safe to show.
"""

from __future__ import annotations

import asyncio

from appliance.errors import NotFound, Unprocessable, UpstreamError, UpstreamTimeout


class DatasourceNotFound(NotFound):
    code = "datasource_not_found"


class DatasourceUnreachable(UpstreamError):
    """No connection could be made (refused, reset, no route, name does not resolve)."""

    code = "datasource_unreachable"

    def __init__(self, datasource: str, problem: str = "unreachable") -> None:
        super().__init__(f"datasource '{datasource}' is {problem}")
        self.datasource = datasource


class DatasourceAuthFailed(UpstreamError):
    code = "datasource_auth_failed"

    def __init__(self, datasource: str, problem: str = "authentication failed") -> None:
        super().__init__(f"datasource '{datasource}': {problem}")
        self.datasource = datasource


class DatasourceAuthRefused(DatasourceAuthFailed):
    """The server asked for a way of sending the password that this connection may not use (a
    cleartext or MD5 password without verified TLS); the password was not sent."""

    code = "auth_method_refused"


class DatasourceTLSError(UpstreamError):
    code = "datasource_tls_error"

    def __init__(self, datasource: str, problem: str = "TLS handshake failed") -> None:
        super().__init__(f"datasource '{datasource}': TLS: {problem}")
        self.datasource = datasource


class DatasourceTimeout(UpstreamTimeout):
    code = "datasource_timeout"

    def __init__(self, datasource: str, seconds: float, what: str = "answer") -> None:
        super().__init__(f"datasource '{datasource}' did not {what} within {seconds:g} s")
        self.datasource = datasource


class DatasourceProtocolError(UpstreamError):
    """The datasource answered with something the engine cannot use (or a refused redirect)."""

    code = "datasource_error"

    def __init__(self, datasource: str, problem: str) -> None:
        super().__init__(f"datasource '{datasource}': {problem}")
        self.datasource = datasource


class ResponseTooLarge(UpstreamError):
    code = "response_too_large"

    def __init__(self, datasource: str, limit: int) -> None:
        super().__init__(f"datasource '{datasource}': the response is larger than the "
                         f"datasource's max_response_bytes ({limit})")
        self.datasource = datasource


class QueryFailed(Unprocessable):
    """The datasource refused or failed the statement. `state` is a short code (SQLSTATE, a
    MongoDB error code, an HTTP status); `problem` the driver's primary message, shown to
    developers only (it may name tables or columns of the query)."""

    code = "query_failed"

    def __init__(self, datasource: str, problem: str, state: str = "") -> None:
        suffix = f" ({state})" if state else ""
        super().__init__(f"datasource '{datasource}': the query failed: {problem}{suffix}")
        self.datasource = datasource
        self.state = state
        self.problem = problem


def connection_failure(name: str, exc: BaseException,
                       connect_timeout: float) -> BaseException | None:
    """What every engine answers for a cancellation or an egress outcome (the dialer's denial,
    timeout or unreachable target); None for anything else, which the engine translates."""
    from appliance.egress import EgressDenied, EgressTimeout, EgressUnreachable

    if isinstance(exc, asyncio.CancelledError | EgressDenied):
        return exc
    if isinstance(exc, EgressTimeout):
        return DatasourceTimeout(name, connect_timeout, "accept a connection")
    if isinstance(exc, EgressUnreachable):
        return DatasourceUnreachable(name, f"unreachable ({exc.message})")
    return None
