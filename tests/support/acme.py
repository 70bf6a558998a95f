"""Helpers for the ACME tests (no tests here): real Pebble + pebble-challtestsrv on free loopback
ports, a small HTTPS front for Pebble that adds ARI (`renewalInfo`), profiles and 429s and counts
orders, and `appliance serve` subprocesses in acme mode with an admin token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import ServerProcess, clean_env, start_server
from tests.support.app import make_settings, prepare, store_env
from tests.support.certificates import TestCA, make_test_ca
from tests.support.outside_store import OutsideStore
from tests.support.ports import free_port

HAVE_PEBBLE = shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None
EAB_KID = "kid-1"
EAB_HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
NAME = "acme.test"


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


# -- a mini CA for Pebble's own HTTPS listener ------------------------------------------------


MiniCA = TestCA  # the ACME front's CA, certificate and key (tests/support/certificates.py)


def make_mini_ca(where: Path, cn: str = "ACME test front CA") -> MiniCA:
    return make_test_ca(where, cn)


# -- Pebble ------------------------------------------------------------------------------------


@dataclass
class Pebble:
    """Pebble and its DNS (challtestsrv); `http_port` is where Pebble sends HTTP-01 requests."""

    workdir: Path
    ca: MiniCA
    http_port: int
    eab: bool = False
    # Percent of valid authorizations Pebble reuses for a new order (its default: 50); 0 makes
    # every order validate its challenge again.
    authz_reuse: int | None = None
    port: int = field(default_factory=free_port)
    mgmt_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    dns_mgmt_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)  # Pebble's TLS-ALPN-01 target
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        if "dns" not in self.procs:
            self.procs["dns"] = subprocess.Popen(
                ["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-dns01", f"127.0.0.1:{self.dns_port}",
                 "-management", f"127.0.0.1:{self.dns_mgmt_port}",
                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                stdout=self._log("dns"), stderr=subprocess.STDOUT)
            wait_port(self.dns_mgmt_port)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.ca.cert_pem), "privateKey": str(self.ca.key_pem),
            "httpPort": self.http_port, "tlsPort": self.tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab,
            "externalAccountMACKeys": {EAB_KID: EAB_HMAC} if self.eab else {},
        }}
        path = self.workdir / f"pebble-{self.port}.json"
        path.write_text(json.dumps(config))
        env = clean_env(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        if self.authz_reuse is not None:
            env["PEBBLE_AUTHZREUSE"] = str(self.authz_reuse)
        self.procs["pebble"] = subprocess.Popen(
            ["pebble", "-config", str(path), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=self._log("pebble"), stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        wait_port(self.port)
        wait_port(self.mgmt_port)
        return self

    def _log(self, what: str) -> Any:
        return (self.workdir / f"{what}-{self.port}.log").open("ab")

    def stop_pebble(self) -> None:
        proc = self.procs.pop("pebble", None)
        if proc is not None:
            proc.terminate()
            proc.wait(10)

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.ca_pem))

    def root_pem(self) -> str:
        """Pebble's issuing root, from its management port."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.mgmt_port,
                                           context=self.ssl_context(), timeout=10)
        conn.request("GET", "/roots/0")
        return conn.getresponse().read().decode()

    def set_address(self, name: str, address: str) -> None:
        """challtestsrv: resolve `name` to `address` (A record)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.dns_mgmt_port, timeout=10)
        conn.request("POST", "/add-a", json.dumps({"host": name, "addresses": [address]}))
        assert conn.getresponse().status == 200


# -- a front for Pebble: ARI, profiles, 429, counting -----------------------------------------


class CAFront:
    """An HTTPS server forwarding everything to Pebble (keeping Host, so Pebble's URLs point
    back here) that can add `renewalInfo` and profiles to the directory, answer renewalInfo
    requests itself, refuse orders with 429, and records every newOrder/newAccount payload."""

    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        self.port = free_port()
        self.ari_window: tuple[dt.datetime, dt.datetime] | None = None
        self.ari_retry_after = 3600
        self.ari_broken = False
        self.profiles: dict[str, str] | None = None
        self.reject_orders_429: int | None = None  # Retry-After seconds
        self.orders: list[dict[str, Any]] = []
        self.order_times: list[float] = []  # time.time() of each newOrder
        # Orders Pebble answered "ready" at once: it reused a valid authorization of the
        # account, so nothing was validated. PEBBLE_AUTHZREUSE=0 still does that to 1 order in
        # 100 (Pebble makes a new authorization when `rand.Intn(100) > percent`).
        self.reused = 0
        # While set, POSTs to challenge URLs (the client telling the CA "validate now") are
        # held, counted in `held`, and dropped (503, never forwarded) once it is cleared.
        self.hold_challenges = False
        self.held = 0
        self.accounts: list[dict[str, Any]] = []
        self.ari_requests: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> CAFront:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pebble.ca.cert_pem, self.pebble.ca.key_pem)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        if path.startswith("/renewal-info/") and self.ari_window is not None:
            self.ari_requests.append(path.rsplit("/", 1)[1])
            if self.ari_broken:
                return web.Response(status=500, text="renewal info broke (test)")
            start, end = self.ari_window
            return web.json_response(
                {"suggestedWindow": {"start": start.isoformat().replace("+00:00", "Z"),
                                     "end": end.isoformat().replace("+00:00", "Z")}},
                headers={"Retry-After": str(self.ari_retry_after)})
        payload = _jws_payload(body) if body else None
        if path.startswith("/chalZ/") and request.method == "POST" and self.hold_challenges:
            self.held += 1
            while self.hold_challenges:
                await asyncio.sleep(0.05)
            return web.Response(status=503, text="challenge dropped (test)")
        if path == "/order-plz":
            self.orders.append(payload or {})
            self.order_times.append(time.time())
            if self.reject_orders_429 is not None:
                return web.json_response(
                    {"type": "urn:ietf:params:acme:error:rateLimited",
                     "detail": "too many certificates (test)", "status": 429},
                    status=429, content_type="application/problem+json",
                    headers={"Retry-After": str(self.reject_orders_429),
                             "Replay-Nonce": await self._nonce(request)})
        if path == "/sign-me-up":
            self.accounts.append(payload or {})
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection")}
        async with aiohttp.ClientSession() as session, session.request(
            request.method, f"https://127.0.0.1:{self.pebble.port}{request.path_qs}",
            data=body, headers=headers, ssl=self.pebble.ssl_context(),
            allow_redirects=False) as upstream:
            data = await upstream.read()
            if path == "/order-plz" and upstream.status == 201 and \
                    json.loads(data).get("status") == "ready":
                self.reused += 1
            out_headers = {k: v for k, v in upstream.headers.items()
                           if k.lower() not in ("content-length", "transfer-encoding",
                                                "connection", "content-encoding")}
            if path == "/dir":
                directory = json.loads(data)
                if self.ari_window is not None:
                    directory["renewalInfo"] = f"https://{request.host}/renewal-info"
                if self.profiles is not None:
                    directory.setdefault("meta", {})["profiles"] = self.profiles
                data = json.dumps(directory).encode()
            return web.Response(status=upstream.status, body=data, headers=out_headers)

    async def _nonce(self, request: web.Request) -> str:
        async with aiohttp.ClientSession() as session, session.head(
                f"https://127.0.0.1:{self.pebble.port}/nonce-plz",
                headers={"Host": request.host}, ssl=self.pebble.ssl_context()) as resp:
            return resp.headers["Replay-Nonce"]


class Balancer:
    """A TCP load balancer in front of several instances' plain-HTTP listeners, on the port
    Pebble sends HTTP-01 requests to: each connection goes to the next backend in turn that
    accepts (one that refuses, like a killed instance, is skipped). `connections` counts per
    backend port."""

    def __init__(self, port: int, backends: list[int]) -> None:
        self.port = port
        self.backends = backends
        self.connections: dict[int, int] = {}
        self._next = 0
        self._sock = socket.create_server(("127.0.0.1", port))
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Balancer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        backends = list(self.backends)
        start, self._next = self._next, self._next + 1
        for i in range(len(backends)):
            port = backends[(start + i) % len(backends)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), 2)
            except OSError:
                continue
            self.connections[port] = self.connections.get(port, 0) + 1
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)
            return
        client.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _jws_payload(body: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(body)["payload"]
        if not raw:
            return {}
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, KeyError, TypeError):
        return None


# -- the appliance in acme mode ---------------------------------------------------------------


@dataclass
class AcmeAppliance:
    server: ServerProcess
    token: str
    state: Path
    config: Path

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 130) -> tuple[int, Any]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the API calls do not test the certificate
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=ctx,
                                           timeout=timeout)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def status(self) -> dict[str, Any]:
        code, body = self.request("GET", "/api/v1/tls")
        assert code == 200, body
        return body

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30,
             what: str = "status") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status()
            if predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {last}\n{self.server.stderr()}")

    def wait_issued(self, timeout: float = 30) -> dict[str, Any]:
        return self.wait(lambda s: s.get("issuer") is not None and not s["temporary"],
                         timeout, "an ACME certificate")

    def wait_error(self, timeout: float = 30) -> dict[str, Any]:
        return self.wait(lambda s: bool(s.get("last_error")), timeout, "an ACME error")

    def served_certificate(self, name: str = NAME,
                           ctx: ssl.SSLContext | None = None) -> x509.Certificate:
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.server.port), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def stop(self) -> None:
        self.server.stop()

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def db(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one read of the store, from a handle of its own (as another process)."""
        outside = OutsideStore(make_settings(self.state))
        try:
            return outside.query(sql, params)
        finally:
            outside.close()


def prepare_state(workdir: Path, store: dict[str, str] | None = None) -> tuple[Path, str]:
    """A state dir with an admin and its API token (2FA not required); on `store`
    (APPLIANCE_STORE_* variables) when given."""
    state = workdir / "state"
    _, tokens = asyncio.run(prepare(state, require_2fa="", users=(), tokens=True, store=store))
    return state, tokens["admin"]


def write_config(path: Path, *, directory: str, http_port: int, names: tuple[str, ...] = (NAME,),
                 ca_bundle: Path | None, extra_tls: str = "") -> Path:
    names_toml = ", ".join(json.dumps(n) for n in names)
    path.write_text(
        "[server]\n"
        'listen = "127.0.0.1:0"\n'
        f'http_listen = "127.0.0.1:{http_port}"\n'
        "[auth]\nrequire_2fa = []\n"
        "[tls]\n"
        'mode = "acme"\n'
        f"names = [{names_toml}]\n"
        'email = "admin@example.org"\n'
        f'directory = "{directory}"\n'
        + (f'ca_bundle = "{ca_bundle}"\n' if ca_bundle else "")
        + "renew_check_interval = 1\n"
        + extra_tls
    )
    return path


def start_appliance(workdir: Path, config: Path, state: Path, token: str,
                    store: dict[str, str] | None = None) -> AcmeAppliance:
    """`serve` on the store of `state` (`store`: the APPLIANCE_STORE_* variables of another)."""
    env = clean_env(APPLIANCE_TLS_MODE="acme", **(store_env(state) if store is None else store))
    server = start_server(["serve", "--config", str(config), "--state-dir", str(state)],
                          cwd=workdir, env=env)
    return AcmeAppliance(server, token, state, config)


@contextlib.contextmanager
def running_appliance(workdir: Path, *, directory: str, http_port: int, ca_bundle: Path | None,
                      names: tuple[str, ...] = (NAME,), extra_tls: str = "",
                      ) -> Iterator[AcmeAppliance]:
    workdir.mkdir(parents=True, exist_ok=True)
    state, token = prepare_state(workdir)
    config = write_config(workdir / "appliance.toml", directory=directory, http_port=http_port,
                          names=names, ca_bundle=ca_bundle, extra_tls=extra_tls)
    appliance = start_appliance(workdir, config, state, token)
    try:
        yield appliance
    finally:
        appliance.stop()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def verify_chain(leaf: x509.Certificate, chain_pem: bytes, root_pem: str, name: str) -> None:
    """Verify `leaf` + intermediates against Pebble's root (raises on failure)."""
    from cryptography.x509.verification import PolicyBuilder, Store

    roots = x509.load_pem_x509_certificates(root_pem.encode())
    intermediates = x509.load_pem_x509_certificates(chain_pem)[1:]
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, intermediates)
