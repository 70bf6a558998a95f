"""Helpers for the console tests (no tests here): a real `appliance serve` subprocess, a real
PostgreSQL cluster with password (SCRAM) authentication, and Debian's Chromium driven by Playwright.

Chromium trusts exactly the appliance's certificate: the test reads the leaf the server presents
(verified against the appliance's local CA), and passes the SHA-256 of its public key with
`--ignore-certificate-errors-spki-list`. Any other certificate is still refused, so the security
headers, the `Secure` cookie and the same-origin checks are exercised as a user would meet them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import OUTPUT_DIR, ServerProcess, clean_env, run_cli, start_server
from tests.conftest import postgres_cluster as shared_postgres_cluster

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = OUTPUT_DIR / "console"
ADMIN_PASSWORD = "admin-password-0123"
DEVELOPER_PASSWORD = "developer-password-0123"
VIEWER_PASSWORD = "viewer-password-0123"
PG_PASSWORD = "pg-Secret-5f0c1d9e-never-shown"
WIDTHS = {"wide": (1280, 900), "narrow": (390, 844)}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


# --- the appliance ---------------------------------------------------------------------------


@dataclass
class Appliance:
    server: ServerProcess
    state: Path
    url: str
    spki_sha256: str  # base64, as Chromium's --ignore-certificate-errors-spki-list wants it
    leaf_der: bytes


def leaf_of(server: ServerProcess) -> bytes:
    """The DER leaf certificate the server presents, verified against its local CA."""
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return der


def spki_sha256(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def init_state(root: Path) -> Path:
    """`appliance init` of `root`/state, the admin's password ADMIN_PASSWORD; the state dir."""
    state = root / "state"
    password_file = root / "admin-password"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    done = run_cli("init", "--state-dir", str(state), "--admin-password-file", str(password_file))
    assert done.returncode == 0, done.stderr
    return state


def serve(root: Path, state: Path, **env: str) -> ServerProcess:
    """`appliance serve` of `state` on an ephemeral loopback port, with `env` added to a clean
    environment."""
    return start_server(["serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
                        cwd=root, env=clean_env(**env))


@contextlib.contextmanager
def appliance(root: Path, **env: str) -> Iterator[Appliance]:
    state = init_state(root)
    server = serve(root, state, **env)
    try:
        der = leaf_of(server)
        yield Appliance(server, state, f"https://127.0.0.1:{server.port}", spki_sha256(der), der)
    finally:
        server.stop()


# --- PostgreSQL with a password -------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    password: str


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A throwaway cluster on 127.0.0.1 that takes only SCRAM password logins over TCP."""
    with shared_postgres_cluster(name="console", superuser_password=PG_PASSWORD,
                                 hba="host all all 127.0.0.1/32 scram-sha-256\n",
                                 conf="max_connections = 20\n") as cluster:
        yield Postgres(cluster.port, PG_PASSWORD)


def pg_execute(pg: Postgres, *statements: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="postgres",
                                     password=pg.password, database="postgres", ssl=False)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


# --- Chromium --------------------------------------------------------------------------------


def launch_chromium(playwright: Any, spki: str) -> Any:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True,
        args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"])


@contextlib.contextmanager
def chromium_for(app: Appliance) -> Iterator[Any]:
    """Chromium trusting the appliance's certificate, and Playwright's own HTTP client (which
    the Recorder reads API answers through, with `route.fetch`) trusting its local CA and nothing
    else, through NODE_EXTRA_CA_CERTS (put back afterwards)."""
    from playwright import sync_api

    assert app.server.ca_file is not None
    previous = os.environ.get("NODE_EXTRA_CA_CERTS")
    os.environ["NODE_EXTRA_CA_CERTS"] = str(app.server.ca_file)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = launch_chromium(playwright, app.spki_sha256)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("NODE_EXTRA_CA_CERTS", None)
        else:
            os.environ["NODE_EXTRA_CA_CERTS"] = previous


def login(page: Any, url: str, username: str, password: str) -> None:
    """Open the console and submit its login form (what follows is the test's to wait for)."""
    page.goto(url + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


class Recorder:
    """Every response a page received (URL, status, body) and every dialog it opened."""

    def __init__(self, page: Any) -> None:
        self.responses: list[tuple[str, int, bytes]] = []
        self.content_types: dict[str, str] = {}
        self.unreadable: list[str] = []  # responses whose body could not be captured
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        # API answers are captured through a route: the recorded body is exactly the one the
        # page is then given (a `response` event cannot always read a streamed body).
        page.route("**/api/**", self._route)
        page.on("response", self._response)
        page.on("dialog", self._dialog)
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def _route(self, route: Any) -> None:
        try:
            response = route.fetch()
            body = response.body()
        except Exception:
            # The page or its context closed while the request was in flight ("Response has
            # been disposed"): nothing reaches the page any more, so nothing is left to record.
            # Raised here, it would fail whichever test closes the browser next.
            self.unreadable.append(route.request.url)
            with contextlib.suppress(Exception):
                route.abort()
            return
        self.content_types[response.url] = response.headers.get("content-type", "")
        self.responses.append((response.url, response.status, body))
        route.fulfill(response=response, body=body)

    def _response(self, response: Any) -> None:
        if "/api/" in response.url:
            return  # recorded by _route
        self.content_types[response.url] = response.headers.get("content-type", "")
        try:
            body = response.body()
        except Exception:
            body = b""
            self.unreadable.append(response.url)
        self.responses.append((response.url, response.status, body))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


def new_page(browser: Any, width: int = 1280, height: int = 900) -> tuple[Any, Any, Recorder]:
    """A context of its own at that viewport, its page (15 s timeouts) and the page's Recorder."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(15_000)
    return context, page, Recorder(page)


def clean(recorder: Recorder) -> None:
    """No uncaught script error and no dialog (alert/confirm/prompt) ever opened: confirmations
    are the page's own <dialog>, never confirm()."""
    assert recorder.page_errors == []
    assert recorder.dialogs == []


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.wait_for_timeout(150)  # let the last frame settle
    page.screenshot(path=str(path), full_page=True)
    return path


def totp_now(secret: str, *, after: float = 0.0) -> str:
    """A code for now; waits for the next 30 s step when `after` (the last code's time) is in this
    step, because the appliance never accepts a code twice."""
    import pyotp

    totp = pyotp.TOTP(secret)
    if after and int(after // 30) == int(time.time() // 30):
        time.sleep(30 - time.time() % 30 + 0.5)
    return totp.now()


# --- the API, for seeding (outside the browser) -----------------------------------------------


class ApiClient:
    """A cookie session against the appliance, with the Origin and CSRF headers it requires."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.ctx = ssl.create_default_context(cafile=str(app.server.ca_file))
        self.cookie: str | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import http.client
        import json

        conn = http.client.HTTPSConnection("127.0.0.1", self.app.server.port, context=self.ctx,
                                           timeout=30)
        headers = {"Origin": self.app.url, "X-Appliance-CSRF": "1", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.cookie:
            headers["Cookie"] = self.cookie
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie" and value.startswith("__Host-appliance-session="):
                    self.cookie = value.split(";", 1)[0]
        finally:
            conn.close()
        return response.status, (json.loads(raw) if raw else None)

    def login(self, username: str, password: str) -> None:
        status, body = self.call("POST", "/api/v1/session",
                                 {"username": username, "password": password})
        assert status == 201, body


def add_user(app: Appliance, root: Path, name: str, role: str, password: str,
             groups: Sequence[str] = ()) -> None:
    password_file = root / f"{name}-password"
    password_file.write_text(password + "\n")
    flags = [arg for group in groups for arg in ("--group", group)]
    done = run_cli("users", "add", name, "--role", role, "--password-file", str(password_file),
                   "--no-password-change", *flags, "--state-dir", str(app.state))
    assert done.returncode == 0, done.stderr
