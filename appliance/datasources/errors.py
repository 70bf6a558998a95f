"""What a datasource can do wrong, as the appliance's errors: unreachable, refused credentials, TLS,
timeout, a failed statement, an oversized answer.

Owns the error classes and their codes. A message names the datasource and never holds a
credential, a parameter value or a result: a failed statement is described from codes and schema
names (`named`), never from a driver's message text.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Collection, Iterable

from appliance.errors import NotFound, Unprocessable, UpstreamError, UpstreamTimeout


class DatasourceNotFound(NotFound):
    code = "datasource_not_found"


class DatasourceUnreachable(UpstreamError):
    """No connection could be made (refused, reset, no route, name does not resolve)."""

    code = "datasource_unreachable"

    def __init__(self, datasource: str, problem: str = "unreachable") -> None:
        super().__init__(f"datasource '{datasource}' is {problem}")
        self.datasource = datasource


class EngineRetired(DatasourceUnreachable):
    """The engine was retired (its datasource changed, here or on another instance) after a run
    took it and before the run got a connection: the runner takes the new engine once."""

    def __init__(self, datasource: str) -> None:
        super().__init__(datasource, "being reconfigured; try again")


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


class DatasourceFileRefused(UpstreamError):
    """A SQLite datasource's file, as found when the engine opens it, is not one it may open (a
    symbolic link, in the state directory, the same file as one there, changed while opened)."""

    code = "datasource_file_refused"

    def __init__(self, datasource: str, problem: str) -> None:
        super().__init__(f"datasource '{datasource}': the database file is refused: {problem}")
        self.datasource = datasource


class ResponseTooLarge(UpstreamError):
    code = "response_too_large"

    def __init__(self, datasource: str, limit: int) -> None:
        super().__init__(f"datasource '{datasource}': the response is larger than the "
                         f"datasource's max_response_bytes ({limit})")
        self.datasource = datasource


class QueryFailed(Unprocessable):
    """The datasource refused or failed the statement. `state` is a short code (SQLSTATE, a
    MongoDB error code, an SQLite result code); `problem` a fixed sentence for that code plus the
    names the driver reports in fields that cannot hold a value (constraint, table, column),
    shown to developers only. Never the driver's message text: it may quote a value."""

    code = "query_failed"

    def __init__(self, datasource: str, problem: str, state: str = "") -> None:
        suffix = f" ({state})" if state else ""
        super().__init__(f"datasource '{datasource}': the query failed: {problem}{suffix}")
        self.datasource = datasource
        self.state = state
        self.problem = problem


_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


def named(names: Iterable[tuple[str, str | None]], hidden: Collection[str] = ()) -> str:
    """`constraint "t_x_key", table "t"` from (what, name) pairs a driver reported in fields that
    hold schema names. A name is left out when it is empty, long or odd, or holds one of `hidden`
    (the run's identifier values: a constraint named after a chosen table holds it, or its first
    16 characters when PostgreSQL shortened the name)."""
    shown = []
    hide = [value.casefold()[:16] for value in hidden if value]
    for what, name in names:
        if not name or not _NAME_RE.fullmatch(name):
            continue
        folded = name.casefold()
        if any(value in folded for value in hide):
            continue
        shown.append(f'{what} "{name}"')
    return ", ".join(shown)


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
        return DatasourceUnreachable(name, f"unreachable: {exc.message}")
    return None


# OpenSSL's reasons a handshake fails most often, in words (others: the reason, lower-cased).
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS (does it take plain "
                            "connections only?)",
    "RECORD_LAYER_FAILURE": "the server did not answer in TLS (does it take plain "
                            "connections only?)",
    "UNSUPPORTED_PROTOCOL": "the server offers only a TLS version this appliance refuses",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server refused every TLS version this appliance offers",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server and this appliance share no cipher",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
}


def tls_problem(exc: ssl.SSLError) -> str:
    """A failed TLS handshake in words: whose certificate was not trusted and why, or what the
    handshake's failure means; never the exception's Python text."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message or 'verification failed'})"
    reason = exc.reason or ""
    if reason in _TLS_REASONS:
        return _TLS_REASONS[reason]
    return f"handshake failed ({reason.replace('_', ' ').lower()})" if reason \
        else "handshake failed"
