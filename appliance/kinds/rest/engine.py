"""The REST engine: one aiohttp session per datasource (its connection pool), every connection
through the egress dialer; credentials added here, on the server.

Owns joining the bound request to the base URL (scheme, host and port only from the datasource),
adding auth, the redirect rule (none unless enabled, then hop by hop through the policy, never
https to http, and no header of the datasource's or the template's, nor a body, sent once a
hop has left its origin) and the response-size cap. Never logs a request, a header value or a
response body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from appliance.datasources.config import CONNECT_TIMEOUT
from appliance.datasources.engine import Engine, EngineRuns, RowStream, Target
from appliance.datasources.errors import (
    DatasourceAuthFailed,
    DatasourceProtocolError,
    DatasourceTimeout,
    DatasourceTLSError,
    DatasourceUnreachable,
    ResponseTooLarge,
    connection_failure,
    tls_problem,
)
from appliance.egress import Dialer
from appliance.egress.aiohttp_hook import (
    REDIRECT_STATUSES,
    egress_session,
    request_following_redirects,
)
from appliance.egress.dialer import describe_connect_error
from appliance.errors import ApplianceError
from appliance.kinds.rest.binding import RestRequest

COLUMNS = ["status", "content_type", "body"]


class RestEngine(Engine):
    def __init__(self, target: Target, dialer: Dialer) -> None:
        super().__init__(target)
        self._dialer = dialer
        self._session: aiohttp.ClientSession | None = None
        self._runs = EngineRuns(target.name)
        self._base = str(target.config["base_url"]).rstrip("/")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = egress_session(self._dialer, purpose="rest",
                                           datasource=self.target.id,
                                           connect_timeout=CONNECT_TIMEOUT,
                                           limit=self.target.limits.max_connections)
        return self._session

    def _auth_headers(self) -> dict[str, str]:
        config = self.target.config
        auth = config.get("auth", "none")
        if auth == "bearer":
            token = self.target.secret("token")
            return {"Authorization": f"Bearer {token}"} if token else {}
        if auth == "basic":
            password = self.target.secret("password") or ""
            return {"Authorization": basic_authorization(str(config["username"]), password)}
        if auth == "header":
            value = self.target.secret("api_key")
            return {str(config["header_name"]): value} if value else {}
        return {}

    async def _send(self, request: RestRequest, timeout: float) -> aiohttp.ClientResponse:
        url = URL(self._base + request.target, encoded=True)
        headers = dict(request.headers)
        for name in list(headers):
            if name.lower() == "authorization" or name.lower() == str(
                    self.target.config.get("header_name", "")).lower():
                del headers[name]  # the datasource's credentials win over a template header
        headers.update(self._auth_headers())
        kwargs: dict[str, Any] = {"headers": headers}
        if request.has_body:
            kwargs["data"] = json.dumps(request.json, ensure_ascii=False,
                                        separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        session = self._get_session()
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)
        if self.target.config.get("follow_redirects"):
            response = await request_following_redirects(
                session, request.method, url,
                max_redirects=int(self.target.config.get("max_redirects", 5)), **kwargs)
        else:
            response = await session.request(request.method, url, allow_redirects=False,
                                             **kwargs)
        if response.status in REDIRECT_STATUSES:
            response.release()
            raise DatasourceProtocolError(
                self.name, f"the API answered with a redirect ({response.status}) and this "
                           f"datasource does not follow redirects"
                           if not self.target.config.get("follow_redirects")
                           else f"redirected too often ({response.status})")
        return response

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[str, Any]:
        limit = self.target.limits.max_response_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise ResponseTooLarge(self.name, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(self.name, limit)
            chunks.append(chunk)
        raw = b"".join(chunks)
        content_type = response.content_type or ""
        if content_type == "application/json" or content_type.endswith("+json"):
            try:
                return content_type, json.loads(raw)
            except (ValueError, RecursionError):
                raise DatasourceProtocolError(self.name, "the API sent invalid JSON") from None
        return content_type, raw.decode(response.charset or "utf-8", errors="replace")

    async def test(self, timeout: float) -> None:
        try:
            with self._runs.run():
                async with asyncio.timeout(timeout):
                    response = await self._send(RestRequest("HEAD", "/", (), ()), timeout)
                    response.release()
        except BaseException as exc:
            raise self.translate(exc, timeout) from None
        if response.status in (401, 403):
            raise DatasourceAuthFailed(self.name, f"authentication failed (HTTP "
                                                  f"{response.status})")

    @contextlib.asynccontextmanager
    async def open(self, bound: RestRequest, *, timeout: float, fetch: int,
                   stream: bool = False) -> AsyncIterator[RowStream]:
        with self._runs.run():  # EngineRetired once retired: never the old config's session
            try:
                async with asyncio.timeout(timeout):
                    response = await self._send(bound, timeout)
                    try:
                        content_type, body = await self._read(response)
                    finally:
                        response.release()
            except BaseException as exc:
                raise self.translate(exc, timeout) from None
            yield RowStream(list(COLUMNS), _one_batch([[response.status, content_type, body]]))

    def translate(self, exc: BaseException, timeout: float) -> BaseException:
        name = self.name
        common = connection_failure(name, exc, CONNECT_TIMEOUT)
        if common is not None:
            return common
        if isinstance(exc, ApplianceError):
            if exc.status >= 500 and not getattr(exc, "datasource", None):
                return DatasourceProtocolError(name, exc.message)
            return exc
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            return DatasourceTimeout(name, timeout)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return DatasourceTLSError(name, tls_problem(exc.certificate_error)
                                      if isinstance(exc.certificate_error, ssl.SSLError)
                                      else "certificate not trusted")
        if isinstance(exc, aiohttp.ClientSSLError) and isinstance(exc.os_error, ssl.SSLError):
            return DatasourceTLSError(name, tls_problem(exc.os_error))
        if isinstance(exc, ssl.SSLError):
            return DatasourceTLSError(name, tls_problem(exc))
        if isinstance(exc, aiohttp.ClientSSLError):
            return DatasourceTLSError(name, "handshake failed")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return DatasourceUnreachable(name, "unreachable: " + describe_connect_error(
                exc.os_error, exc.host, exc.port))
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            return DatasourceUnreachable(name, "unreachable (the connection was lost)")
        if isinstance(exc, aiohttp.ClientError):
            return DatasourceProtocolError(name, f"the API could not be used "
                                                 f"({type(exc).__name__})")
        return DatasourceUnreachable(name, f"unreachable ({type(exc).__name__})")

    async def close(self) -> None:
        await self._runs.retire()  # the requests under way end first
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _one_batch(rows: list[Any]) -> AsyncIterator[list[Any]]:
    yield rows


def basic_authorization(username: str, password: str) -> str:
    """RFC 7617's credentials, UTF-8 (aiohttp's BasicAuth is deprecated). The user name has no
    colon: the datasource's config refuses one (the server splits the pair at the first)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"
