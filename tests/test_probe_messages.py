"""What a failed connection says, in words, through the real API with real listeners on loopback:
refused, timed out, a name that does not resolve, TLS refused or untrusted. Never Python's text
("Connect call failed ('127.0.0.1', 1)", "[Errno 111]", "SSLError(")."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web

from tests.support.app import Client
from tests.support.certificates import self_signed
from tests.support.queries import as_role, create_datasource, proxy

PYTHON_TEXT = ("Connect call failed", "Errno", "Error(", "('127.0.0.1'", "SSL:")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A listener that never accepts, its queue filled: the next SYN is dropped (a timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.asynccontextmanager
async def http_listener(tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def untrusted_context(tmp: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1."""
    self_signed(tmp / "cert.pem", tmp / "key.pem", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


async def checked(dev: Client, kind: str, config: dict[str, object]) -> tuple[int, str]:
    body: dict[str, object] = {"name": f"ds-{closed_port()}", "kind": kind, "config": config}
    if kind == "postgres":
        body["secrets"] = {"password": "pw"}
    ds = await create_datasource(dev, **body)
    resp = await dev.request("POST", f"/api/v1/datasources/{ds['id']}/test")
    message = resp.body["error"]["message"]
    assert not any(text in message for text in PYTHON_TEXT), message
    return resp.status, message


def postgres_at(port: int, host: str = "127.0.0.1", tls: str = "disable") -> dict[str, object]:
    return {"host": host, "port": port, "database": "x", "user": "u", "tls": tls}


async def test_refused_said_in_words(tmp_path: Path) -> None:
    port = closed_port()
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        admin = as_role(appliance, "admin")
        words = f"connection refused by 127.0.0.1 port {port}"
        status, message = await checked(dev, "postgres", postgres_at(port))
        assert status == 502 and f"is unreachable: {words}" in message, message
        status, message = await checked(dev, "rest", {"base_url": f"http://127.0.0.1:{port}"})
        assert status == 502 and f"is unreachable: {words}" in message, message
        # MongoDB's driver retries until its server selection ends (under the test's 10 s): then
        # the dialer's words, not "did not finish within 10 s".
        status, message = await checked(dev, "mongodb", {"host": "127.0.0.1", "port": port,
                                                         "database": "d", "tls": "disable"})
        assert status == 502 and f"is unreachable: {words}" in message, message
        probe = await admin.request("POST", "/api/v1/egress/probe",
                                    {"host": "127.0.0.1", "port": port})
        assert probe.body["connected"] is False
        assert probe.body["error"].startswith(words), probe.body


async def test_a_timeout_said_in_words(tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        admin = as_role(appliance, "admin")
        with full_backlog() as port:
            probe = await admin.request("POST", "/api/v1/egress/probe",
                                        {"host": "127.0.0.1", "port": port})
        assert probe.body["connected"] is False
        assert probe.body["error"] == f"no answer from 127.0.0.1 port {port} (timed out)"


async def test_a_name_that_does_not_resolve_said_in_words(tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        admin = as_role(appliance, "admin")
        status, message = await checked(dev, "postgres", postgres_at(5432, "no-such-host.invalid"))
        assert status == 502, message
        assert "the name no-such-host.invalid does not resolve to an address" in message
        probe = await admin.request("POST", "/api/v1/egress/probe",
                                    {"host": "no-such-host.invalid", "port": 443})
        assert "the name no-such-host.invalid does not resolve" in probe.body["error"]


async def test_tls_failures_said_in_words(tmp_path: Path) -> None:
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        async with http_listener() as plain:
            status, message = await checked(dev, "rest",
                                           {"base_url": f"https://127.0.0.1:{plain}"})
        assert status == 502 and "the server did not answer in TLS" in message, message
        async with http_listener(untrusted_context(tmp_path)) as untrusted:
            status, message = await checked(dev, "rest",
                                           {"base_url": f"https://127.0.0.1:{untrusted}"})
        assert status == 502, message
        assert "TLS: certificate not trusted (self-signed certificate)" in message, message
