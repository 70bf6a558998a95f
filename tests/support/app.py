"""Helpers for the auth, audit, users and route-role tests (no tests here): a real appliance
(build_app on 127.0.0.1:0, local CA, TLS) in this process, seeded users and tokens, a client
that handles the session cookie and the CSRF headers explicitly, and a user's TOTP enrolment
through the API (`enrol`).

`prepare` and `running` hash passwords and seal the keyring at the test cost
(tests/support/costs.py): these tests are about sessions, roles and errors, not the hash's
cost. Every `appliance` subprocess keeps the production parameters (it would rehash a test-cost
hash at login, as after any parameter change).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import re
import shutil
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
from aiohttp import web

from appliance import bootstrap, settings, state_dir
from appliance.audit import Context
from appliance.auth.sessions import COOKIE_NAME
from appliance.core import open_core
from appliance.http.app import build_app
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.tls import TLSManager
from tests.support.costs import TEST_TUNING, cheap_password_hashing
from tests.support.outside_store import OutsideStore, Record

ADMIN_PASSWORD = "admin-password-0123"
PASSWORDS = {
    "admin": ADMIN_PASSWORD,
    "viewer": "viewer-password-0123",
    "developer": "developer-password-0123",
}
# The store of a state directory, as APPLIANCE_STORE_* variables (None: SQLite in the state
# directory). Under APPLIANCE_TEST_STORE=postgres, tests/conftest.py's `_test_store` sets it to
# a fresh PostgreSQL database per state directory (as SQLite has a file per state directory).
STORE_FOR: Callable[[Path], dict[str, str]] | None = None


def store_env(state: Path) -> dict[str, str]:
    """The environment naming the store of `state` for `appliance` subprocesses and CLI verbs
    (empty: SQLite in the state directory)."""
    return {} if STORE_FOR is None else STORE_FOR(state)


def make_settings(state: Path, *, store: Mapping[str, str] | None = None,
                  config: Path | None = None, **env: str) -> Settings:
    """The settings of `state`, on its store (`store`: the APPLIANCE_STORE_* of another, or a
    subprocess's whole environment), with the settings file `config` when given."""
    return settings.load(config_file=config,
                         env={**(store_env(state) if store is None else store),
                              **{f"APPLIANCE_{k.upper()}": v for k, v in env.items()}},
                         flags={"state_dir": str(state)})


async def prepare(state: Path, *, require_2fa: str = "admin",
                  users: tuple[str, ...] = ("viewer", "developer"),
                  tokens: bool = False, store: Mapping[str, str] | None = None,
                  config: Path | None = None, fresh: bool = False
                  ) -> tuple[Settings, dict[str, str]]:
    """State dir with the admin (and `users`, named after their role); optional tokens; on
    `store` (APPLIANCE_STORE_* variables) when given, under the settings file `config`. The
    passwords are hashed at the test cost (`cheap_password_hashing`), the keyring is sealed
    with TEST_TUNING. `fresh`: made by the appliance's code even where a copy would do (for a
    test that patches what that code reads, such as the audit log's clock)."""
    with cheap_password_hashing():
        return await _prepare(state, require_2fa=require_2fa, users=users, tokens=tokens,
                              store=store, config=config, fresh=fresh)


def prepared_for_processes(state: Path, *, env: Mapping[str, str] | None = None,
                           config: Path | None = None) -> str:
    """What `appliance init --admin-password-file` (ADMIN_PASSWORD) then `appliance tokens
    create admin --allow-without-2fa` leave, made in this process for tests that then start
    `appliance` subprocesses on it (`env`: their environment, `config`: their settings file);
    returns the admin's raw token.

    Made here at the test cost (an Argon2id hash and a keyring with TEST_TUNING, which every
    later process reads from the store, as it would the production parameters): about 0.1 s
    of CPU instead of 1.3 s for two subprocesses and a first `serve` that seals the keyring at
    the production cost. Tests about `init` itself run the verb (tests/test_init_and_store.py,
    tests/test_users_cli.py)."""
    _, tokens = asyncio.run(prepare(state, require_2fa="", users=(), tokens=True,
                                    store=clean_store_env(env), config=config))
    return tokens["admin"]


def clean_store_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The APPLIANCE_* variables of a subprocess's environment (what its settings read)."""
    return {k: v for k, v in (env or {}).items() if k.startswith("APPLIANCE_")}


# Prepared SQLite state directories of this process, by (users, tokens): (a copy to make, its
# raw tokens). See `_prepare`.
_PREPARED: dict[tuple[tuple[str, ...], bool], tuple[Path, dict[str, str]]] = {}


async def _prepare(state: Path, *, require_2fa: str, users: tuple[str, ...],
                   tokens: bool, store: Mapping[str, str] | None, config: Path | None,
                   fresh: bool) -> tuple[Settings, dict[str, str]]:
    """The first state of a kind in this process is made by the appliance's own code; later
    ones of the same kind on SQLite with no settings file are a copy of its files (about 40 ms
    of CPU less a test: the migrations, the keyring and the users once per worker, not once per
    test). A copy holds the same instance secret, keys and password hashes, which no test here
    compares across state directories (tests/test_init_and_store.py makes its own)."""
    s = make_settings(state, store=store, config=config, auth_require_2fa=require_2fa)
    plain = (not fresh and s.store.url.scheme == "sqlite" and config is None
             and not store_env(state)
             and not store and not (state.exists() and any(state.iterdir())))
    if not plain:
        return s, await _made(s, users=users, tokens=tokens)
    key = (users, tokens)
    if key not in _PREPARED:
        original = Path(tempfile.mkdtemp(prefix="prepared-")) / "state"
        made = await _made(make_settings(original, auth_require_2fa=require_2fa), users=users,
                           tokens=tokens)
        _PREPARED[key] = (original, made)
        atexit.register(shutil.rmtree, original.parent, True)
    original, raw_tokens = _PREPARED[key]
    shutil.copytree(original, state, dirs_exist_ok=True)
    return s, dict(raw_tokens)


async def _made(s: Settings, *, users: tuple[str, ...], tokens: bool) -> dict[str, str]:
    await bootstrap.init_state(s, admin_user="admin", admin_password=Secret(ADMIN_PASSWORD),
                               tuning=TEST_TUNING)
    raw_tokens: dict[str, str] = {}
    async with open_core(s, tuning=TEST_TUNING) as core:  # the keyring made with test tuning
        auth = core.auth
        for role in users:
            await auth.users.create(username=role, role=role, password=Secret(PASSWORDS[role]),
                                    must_change_password=False, context=Context(actor="test"))
        if tokens:
            for role in ("admin", *users):
                owner = await auth.users.require(role)
                raw, _ = await auth.tokens.create(owner, name=f"{role}-token", role=None,
                                                  expires_days=None,
                                                  context=Context(actor="test"))
                raw_tokens[role] = raw.reveal()
    return raw_tokens


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]
    set_cookies: list[str]

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None

    def session_cookie(self) -> str | None:
        for header in self.set_cookies:
            name, _, rest = header.partition("=")
            if name.strip() == COOKIE_NAME:
                value = rest.split(";", 1)[0].strip().strip('"')
                return value or None
        return None


@dataclass
class Client:
    appliance: Appliance
    http: aiohttp.ClientSession
    cookie: str | None = None
    token: str | None = None

    async def request(self, method: str, path: str, json: Any = None, *, csrf: bool = True,
                      origin: str | None = None, headers: dict[str, str] | None = None,
                      raw_body: bytes | None = None) -> Response:
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if self.cookie:
            sent["Cookie"] = f"{COOKIE_NAME}={self.cookie}"
        if csrf and method not in ("GET", "HEAD"):
            sent.setdefault("Origin", origin or self.appliance.origin)
            sent.setdefault("X-Appliance-CSRF", "1")
        elif origin is not None:
            sent["Origin"] = origin
        kwargs: dict[str, Any] = {"headers": sent, "ssl": self.appliance.ssl}
        if raw_body is not None:
            kwargs["data"] = raw_body
        elif json is not None:
            kwargs["json"] = json
        async with self.http.request(method, self.appliance.url + path, **kwargs) as resp:
            text = await resp.text()
            try:
                body: Any = await resp.json(content_type=None) if text else None
            except ValueError:
                body = text
            return Response(resp.status, body, resp.headers, resp.headers.getall("Set-Cookie", []))

    async def request_until(self, method: str, path: str, check: Callable[[Response], bool]
                            ) -> Response:
        """The answer once `check` holds, asking again for at most the time a change made by
        another process may take to count here (`Appliance.change_latency`); else the last."""
        deadline = time.monotonic() + self.appliance.change_latency
        while True:
            resp = await self.request(method, path)
            if check(resp) or time.monotonic() >= deadline:
                return resp
            await asyncio.sleep(0.02)

    async def login(self, username: str, password: str | None = None,
                    totp: str | None = None) -> Response:
        payload: dict[str, Any] = {"username": username,
                                   "password": password or PASSWORDS[username]}
        if totp is not None:
            payload["totp"] = totp
        resp = await self.request("POST", "/api/v1/session", payload)
        if resp.status == 201:
            self.cookie = resp.session_cookie()
        return resp


@dataclass
class Appliance:
    settings: Settings
    state: Path
    app: web.Application
    runner: web.AppRunner
    url: str
    origin: str
    ssl: ssl.SSLContext
    tokens: dict[str, str] = field(default_factory=dict)
    _http: aiohttp.ClientSession | None = None
    _outside: OutsideStore | None = None

    @property
    def store_path(self) -> Path:
        """The SQLite store's file (tests about that file are SQLite-only: `sqlite_store_only`)."""
        return self.state / state_dir.STORE_FILE

    def client(self, *, token: str | None = None) -> Client:
        assert self._http is not None
        return Client(self, self._http, token=token)

    @property
    def change_latency(self) -> float:
        """How long a change committed by another process may take to count here: none on
        SQLite (its data_version is read per request), the second the Store interface promises
        on PostgreSQL (a notification, or the once-a-second poll when one is lost)."""
        return 0.0 if self.outside.dialect == "sqlite" else 1.0

    @property
    def outside(self) -> OutsideStore:
        """A separate handle on the live store (as another process would have), opened once."""
        if self._outside is None:
            self._outside = OutsideStore(self.settings)
        return self._outside

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Record]:
        return self.outside.query(sql, params)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.outside.execute(sql, params)

    def stored_bytes(self) -> bytes:
        """What the store holds on disk, to look for a secret in: the SQLite file itself, or a
        snapshot of every PostgreSQL table (in the backup's SQLite format)."""
        if self.outside.dialect == "sqlite":
            return self.store_path.read_bytes()
        return self.outside.snapshot_bytes(self.state)

    def close_outside(self) -> None:
        outside, self._outside = self._outside, None
        if outside is not None:
            outside.close()

    def audit_actions(self) -> list[str]:
        return [row["action"] for row in self.query("SELECT action FROM audit_log ORDER BY seq")]


@contextlib.asynccontextmanager
async def running(state: Path, *, egress: dict[str, Any] | None = None,
                  server: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                  audit: dict[str, Any] | None = None,
                  connection_limit: int = 100, **kwargs: Any) -> AsyncIterator[Appliance]:
    """A real appliance in this process on 127.0.0.1 (local CA); `egress`, `server`, `metrics`
    and `audit` override those settings, `connection_limit` the client's (0: unlimited).
    Passwords are hashed at the test cost (`cheap_password_hashing`) while it runs."""
    with cheap_password_hashing():
        async with _running(state, egress=egress, server=server, metrics=metrics, audit=audit,
                            connection_limit=connection_limit, **kwargs) as appliance:
            yield appliance


@contextlib.asynccontextmanager
async def _running(state: Path, *, egress: dict[str, Any] | None,
                   server: dict[str, Any] | None, metrics: dict[str, Any] | None,
                   audit: dict[str, Any] | None, connection_limit: int,
                   **kwargs: Any) -> AsyncIterator[Appliance]:
    s, raw_tokens = await prepare(state, **kwargs)
    if egress:
        s = dataclasses.replace(s, egress=dataclasses.replace(s.egress, **egress))
    if server:
        s = dataclasses.replace(s, server=dataclasses.replace(s.server, **server))
    if metrics:
        s = dataclasses.replace(s, metrics=dataclasses.replace(s.metrics, **metrics))
    if audit:
        s = dataclasses.replace(s, audit=dataclasses.replace(s.audit, **audit))
    s = _allow_the_store(s)
    tls = TLSManager(s.tls, state)
    tls.load_initial()
    app = build_app(s, tls)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
        await site.start()
        port = runner.addresses[0][1]
        assert tls.ca is not None
        ctx = ssl.create_default_context(cafile=str(tls.ca.cert_path))
        url = f"https://127.0.0.1:{port}"
        appliance = Appliance(s, state, app, runner, url, url, ctx, raw_tokens)
        connector = aiohttp.TCPConnector(limit=connection_limit)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         connector=connector) as http:
            appliance._http = http
            try:
                yield appliance
            finally:
                appliance.close_outside()
    finally:
        await runner.cleanup()


def _allow_the_store(s: Settings) -> Settings:
    """A PostgreSQL store's address added to the egress allow list, as its operator must when
    private destinations are denied (the store's connections pass the egress policy too)."""
    url = s.store.url
    if url.scheme == "sqlite" or (s.egress.allow_private and s.egress.mode != "strict"):
        return s
    rule = f"{url.host}:{url.port}"
    if rule in s.egress.allow:
        return s
    return dataclasses.replace(s, egress=dataclasses.replace(s.egress,
                                                             allow=(*s.egress.allow, rule)))


def totp_from_uri(uri: str) -> pyotp.TOTP:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    return pyotp.TOTP(query["secret"][0])


def secret_from_uri(uri: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


async def enrol(appliance: Appliance,
                username: str = "admin") -> tuple[Client, pyotp.TOTP, list[str]]:
    """`username` logs in and enrols TOTP (start, then confirm with the current code): the
    client on the confirmed session, the authenticator, and the recovery codes shown."""
    client = appliance.client()
    resp = await client.login(username)
    assert resp.status == 201, resp.body
    start = await client.request("POST", "/api/v1/users/me/2fa")
    assert start.status == 201, start.body
    totp = totp_from_uri(start.body["otpauth_uri"])
    confirm = await client.request("POST", "/api/v1/users/me/2fa/confirm", {"code": totp.now()})
    assert confirm.status == 200, confirm.body
    client.cookie = confirm.session_cookie()
    return client, totp, confirm.body["recovery_codes"]


def fill_path(path: str) -> str:
    """A concrete path for a route pattern: every `{variable}` becomes a harmless value."""
    return re.sub(r"\{[^}]+\}", "x0000000000000000", path)
