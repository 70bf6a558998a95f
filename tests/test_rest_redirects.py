"""REST redirects and the credential boundary: real aiohttp upstreams on 127.0.0.1 and 127.0.0.2
record every header and URL they receive; once a redirect leaves the datasource's origin no
credential (bearer, basic, API-key header, cookie) reaches any later hop, https never falls back
to http, and every hop still passes the egress policy."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from appliance.egress import Dialer, PolicyHolder, StaticResolver
from appliance.egress.aiohttp_hook import egress_session, origin, request_following_redirects
from appliance.errors import UpstreamError
from appliance.settings import EgressSettings
from appliance.tls import local_ca
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

SECRET = "ds-SECRET-value-7f3a"
COOKIE_SECRET = "template-COOKIE-9b1c"
USERNAME = "svc-user"


@dataclass
class Recorder:
    """A real aiohttp server: answers `routes[path]` with that redirect (status, Location), any
    other path with a small JSON body; records each request's URL and every header."""

    host: str
    routes: dict[str, tuple[int, str]] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    cookie: str | None = None  # a Set-Cookie header to send with every answer
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"url": str(request.url), "raw_path": request.raw_path,
                          "headers": [(k, v) for k, v in request.headers.items()]})
        extra = {"Set-Cookie": self.cookie} if self.cookie else {}
        if request.path in self.routes:
            status, location = self.routes[request.path]
            return web.Response(status=status, headers={"Location": location, **extra})
        return web.json_response({"at": self.host, "path": request.path}, headers=extra)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0, ssl_context=ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def leaked(self, needles: tuple[str, ...]) -> list[str]:
        """Every needle found in any header name or value or in the URL of any request seen."""
        found = []
        for request in self.seen:
            text = " ".join([request["url"], request["raw_path"],
                             *(f"{k}: {v}" for k, v in request["headers"])])
            found += [needle for needle in needles if needle in text]
        return found


@pytest.fixture
async def home() -> AsyncIterator[Recorder]:
    server = await Recorder("127.0.0.1").start()
    yield server
    await server.close()


@pytest.fixture
async def elsewhere() -> AsyncIterator[Recorder]:
    server = await Recorder("127.0.0.2").start()
    yield server
    await server.close()


@pytest.fixture
async def next_door() -> AsyncIterator[Recorder]:
    """Same host as `home`, another port: another origin."""
    server = await Recorder("127.0.0.1").start()
    yield server
    await server.close()


AUTH_MODES = {
    "bearer": ({"auth": "bearer"}, {"token": SECRET}),
    "basic": ({"auth": "basic", "username": USERNAME}, {"password": SECRET}),
    "header": ({"auth": "header", "header_name": "X-Api-Key"}, {"api_key": SECRET}),
}


def needles() -> tuple[str, ...]:
    basic = base64.b64encode(f"{USERNAME}:{SECRET}".encode()).decode()
    return (SECRET, basic, COOKIE_SECRET)


@pytest.mark.parametrize("mode", sorted(AUTH_MODES))
async def test_no_credential_reaches_another_origin(tmp_path: Path, home: Recorder,
                                                    elsewhere: Recorder, next_door: Recorder,
                                                    mode: str) -> None:
    config, secrets = AUTH_MODES[mode]
    home.routes = {
        "/one-hop": (302, f"{elsewhere.origin}/landing"),
        "/two-hops": (307, f"{elsewhere.origin}/back-home"),
        "/scheme-relative": (301, f"//127.0.0.2:{elsewhere.port}/landing"),
        "/other-port": (308, f"{next_door.origin}/landing"),
        "/same-origin": (302, "/landing"),
        "/same-origin-spelt-out": (302, f"http://127.0.0.1:{home.port}/landing"),
    }
    elsewhere.routes = {"/back-home": (302, f"{home.origin}/landing")}
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="api", kind="rest", secrets=secrets,
                                     config={"base_url": home.origin, "follow_redirects": True,
                                             **config})

        async def hop(path: str) -> list[dict[str, Any]]:
            # The template's cookie is bound (a literal one is refused at save time by secret
            # scanning): it is still a header the template sets, dropped at another origin.
            q = await create_query(dev, ds["id"], {
                "path": path, "headers": {"Cookie": "{{ cookie }}"}},
                [{"name": "cookie", "type": "string"}],
                name=f"{mode}{path.replace('/', '-')}")
            for server in (home, elsewhere, next_door):
                server.seen.clear()
            resp = await run(viewer, q["id"], {"cookie": f"sid={COOKIE_SECRET}"})
            assert resp.status == 200, resp.body
            assert resp.body["rows"][0][0] == 200
            return resp.body["rows"][0][2]

        # The first hop carries the credential (so the searches below can find one).
        assert await hop("/one-hop") == {"at": "127.0.0.2", "path": "/landing"}
        assert home.leaked(needles()) and elsewhere.seen
        assert elsewhere.leaked(needles()) == []

        # A -> B -> A: once dropped, nothing credential-bearing comes back at home.
        assert await hop("/two-hops") == {"at": "127.0.0.1", "path": "/landing"}
        assert [r["raw_path"] for r in home.seen] == ["/two-hops", "/landing"]
        home.seen.pop(0)
        assert elsewhere.leaked(needles()) == [] and home.leaked(needles()) == []

        assert await hop("/scheme-relative") == {"at": "127.0.0.2", "path": "/landing"}
        assert elsewhere.leaked(needles()) == []

        assert await hop("/other-port") == {"at": "127.0.0.1", "path": "/landing"}
        assert next_door.seen and next_door.leaked(needles()) == []

        # Within the origin the credential stays (the datasource's API works as before).
        for path in ("/same-origin", "/same-origin-spelt-out"):
            await hop(path)
            assert [r["raw_path"] for r in home.seen] == [path, "/landing"]
            home.seen.pop(0)
            assert home.leaked(needles())


TEMPLATE_SECRET = "template-KEY-4e2d"


async def test_no_template_header_nor_body_reaches_another_origin(
        tmp_path: Path, home: Recorder, elsewhere: Recorder) -> None:
    """A header the query template sets (an `X-Api-Key` bound from a parameter, a literal
    `Accept`) goes to the datasource's origin only; after a hop leaves it, no header of the
    template is sent, and a 307/308 that would carry the body elsewhere is refused."""
    home.routes = {"/away": (302, f"{elsewhere.origin}/landing"),
                   "/post-away": (307, f"{elsewhere.origin}/landing"),
                   "/post-home": (307, "/landing"),
                   "/post-see-other": (303, f"{elsewhere.origin}/landing")}
    headers = {"X-Api-Key": "{{ key }}", "Accept": "application/vnd.home+json",
               "X-Trace": "{{ key }}-trace"}
    names = ("x-api-key", "x-trace")
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name="api", kind="rest",
                                     config={"base_url": home.origin, "follow_redirects": True})
        key = [{"name": "key", "type": "string"}]
        get = await create_query(dev, ds["id"], {"path": "/away", "headers": headers}, key,
                                 name="get-away")
        resp = await run(dev, get["id"], {"key": TEMPLATE_SECRET})
        assert resp.status == 200, resp.body
        assert resp.body["rows"][0][2] == {"at": "127.0.0.2", "path": "/landing"}
        assert home.leaked((TEMPLATE_SECRET, "vnd.home")) != []  # the first hop has them
        assert elsewhere.leaked((TEMPLATE_SECRET, "vnd.home")) == []
        assert not [k for r in elsewhere.seen for k, _ in r["headers"] if k.lower() in names]

        async def post(path: str) -> Any:
            home.seen.clear()
            elsewhere.seen.clear()
            q = await create_query(dev, ds["id"], {"method": "POST", "path": path,
                                                   "headers": headers,
                                                   "json": {"key": "{{ key }}"}},
                                   key, name=f"post{path.replace('/', '-')}")
            return await run(dev, q["id"], {"key": TEMPLATE_SECRET})

        refused = await post("/post-away")
        assert refused.status == 502 and refused.code == "datasource_error", refused.body
        assert "body to another origin" in refused.body["error"]["message"]
        assert TEMPLATE_SECRET not in str(refused.body) and elsewhere.seen == []
        # 303: a GET without the body, and without the template's headers.
        assert (await post("/post-see-other")).status == 200
        assert [r["raw_path"] for r in elsewhere.seen] == ["/landing"]
        assert elsewhere.leaked((TEMPLATE_SECRET, "vnd.home")) == []
        # Within the origin the body and the headers follow a 307 (HTTP's rule).
        assert (await post("/post-home")).status == 200
        assert [r["raw_path"] for r in home.seen] == ["/post-home", "/landing"]
        assert home.leaked((TEMPLATE_SECRET,)) == [TEMPLATE_SECRET, TEMPLATE_SECRET]


async def test_every_redirect_hop_passes_the_egress_policy(tmp_path: Path, home: Recorder,
                                                          elsewhere: Recorder) -> None:
    home.routes = {"/away": (302, f"{elsewhere.origin}/landing")}
    async with proxy(tmp_path / "state", deny=("127.0.0.2",)) as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="api", kind="rest", secrets={"api_key": SECRET},
                                     config={"base_url": home.origin, "auth": "header",
                                             "header_name": "X-Api-Key",
                                             "follow_redirects": True})
        q = await create_query(dev, ds["id"], {"path": "/away"}, name="away")
        resp = await run(dev, q["id"])
        assert resp.status == 403 and resp.code == "egress_denied", resp.body
        resp = await run(viewer, q["id"])
        assert resp.status == 403 and "127.0.0.2" not in str(resp.body)
        assert elsewhere.seen == []
        assert SECRET not in str(resp.body)


async def test_a_refused_redirect_names_the_rule_not_the_location(
        tmp_path: Path, home: Recorder, elsewhere: Recorder) -> None:
    home.routes = {"/userinfo": (302, f"http://{SECRET}:x@127.0.0.2:{elsewhere.port}/landing")}
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        viewer = as_role(appliance, "viewer")
        ds = await create_datasource(dev, name="api", kind="rest",
                                     config={"base_url": home.origin, "follow_redirects": True})
        q = await create_query(dev, ds["id"], {"path": "/userinfo"}, name="userinfo")
        as_dev = await run(dev, q["id"])
        assert as_dev.status == 502 and as_dev.code == "datasource_error", as_dev.body
        assert "user name or password" in as_dev.body["error"]["message"]
        as_viewer = await run(viewer, q["id"])
        assert as_viewer.status == 502 and "'api'" in as_viewer.body["error"]["message"]
        for response in (as_dev, as_viewer):
            assert SECRET not in str(response.body) and "127.0.0.2" not in str(response.body)
    assert elsewhere.seen == []


# --- the follower itself: downgrades, odd locations, cookies -------------------------------------


def dialer(names: dict[str, list[str]] | None = None) -> Dialer:
    settings = EgressSettings(source_address=(), mode="default", allow=(), deny=(),
                              allow_private=True)
    return Dialer(PolicyHolder(settings), resolver=StaticResolver(names or {}))


@pytest.fixture
async def tls_home(tmp_path: Path) -> AsyncIterator[tuple[Recorder, ssl.SSLContext]]:
    leaf = local_ca.ensure_leaf(tmp_path, ("api.test",))
    ca = local_ca.ensure_ca(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    server = await Recorder("127.0.0.1").start(ssl_context=server_ctx)
    yield server, ssl.create_default_context(cafile=str(ca.cert_path))
    await server.close()


async def test_https_to_http_is_refused_whatever_the_origin(
        tls_home: tuple[Recorder, ssl.SSLContext], home: Recorder, elsewhere: Recorder) -> None:
    server, client_ctx = tls_home
    start = f"https://api.test:{server.port}"
    server.routes = {
        "/same-host": (302, f"http://api.test:{home.port}/landing"),
        "/elsewhere": (307, f"http://127.0.0.2:{elsewhere.port}/landing"),
        "/scheme-relative-stays-https": (302, f"//api.test:{server.port}/landing"),
    }
    names = {"api.test": ["127.0.0.1"]}
    async with egress_session(dialer(names), purpose="rest") as session:
        for path in ("/same-host", "/elsewhere"):
            with pytest.raises(UpstreamError, match="https to plain http refused") as info:
                await request_following_redirects(
                    session, "GET", start + path, headers={"Authorization": SECRET},
                    ssl=client_ctx)
            assert SECRET not in str(info.value) and "api.test" not in str(info.value)
        response = await request_following_redirects(
            session, "GET", start + "/scheme-relative-stays-https",
            headers={"Authorization": SECRET}, ssl=client_ctx)
        assert response.status == 200
        response.release()
    assert home.seen == [] and elsewhere.seen == []
    assert [r["raw_path"] for r in server.seen][-2:] == ["/scheme-relative-stays-https",
                                                         "/landing"]
    assert SECRET in str(server.seen[-1]["headers"])  # same origin: still https, still home


@pytest.mark.parametrize(("location", "problem"), [
    ("http://user:pw@127.0.0.2:{port}/landing", "user name or password"),
    ("http://[::zz/landing", "invalid location"),
    ("ftp://127.0.0.2/x", "unsupported location"),
    ("javascript:alert(1)", "unsupported location"),
    ("data:text/plain,x", "unsupported location"),
])
async def test_odd_redirect_locations_are_refused(home: Recorder, elsewhere: Recorder,
                                                  location: str, problem: str) -> None:
    home.routes = {"/odd": (302, location.format(port=elsewhere.port))}
    async with egress_session(dialer(), purpose="rest") as session:
        with pytest.raises(UpstreamError, match=problem):
            await request_following_redirects(session, "GET", f"{home.origin}/odd")
    assert elsewhere.seen == []


async def test_cookies_set_upstream_are_never_sent_back(home: Recorder,
                                                        elsewhere: Recorder) -> None:
    """A cookie the first origin sets is a credential too: after A -> B -> A it is not sent
    (nor on a later request: an egress session keeps no cookie jar)."""
    home.cookie = f"sid={COOKIE_SECRET}; Path=/"
    names = {"api.test": ["127.0.0.1"], "other.test": ["127.0.0.2"]}
    home.routes = {"/login": (302, f"http://other.test:{elsewhere.port}/bounce")}
    elsewhere.routes = {"/bounce": (302, f"http://api.test:{home.port}/landing")}
    async with egress_session(dialer(names), purpose="rest") as session:
        response = await request_following_redirects(
            session, "GET", f"http://api.test:{home.port}/login")
        response.release()
        response = await session.get(f"http://api.test:{home.port}/later")
        response.release()
    assert [r["raw_path"] for r in home.seen] == ["/login", "/landing", "/later"]
    assert home.leaked((COOKIE_SECRET,)) == [] and elsewhere.leaked((COOKIE_SECRET,)) == []


async def test_the_follower_refuses_a_session_with_a_cookie_jar(home: Recorder) -> None:
    async with egress_session(dialer(), purpose="rest",
                              cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        with pytest.raises(TypeError, match="keeps no cookies"):
            await request_following_redirects(session, "GET", f"{home.origin}/x")
    assert home.seen == []


@pytest.mark.parametrize(("a", "b", "same"), [
    ("http://api.test/x", "http://API.test:80/y", True),
    ("https://api.test/", "https://api.test.:443/", True),
    ("HTTPS://api.test/", "https://api.test/", True),
    ("http://api.test/", "https://api.test/", False),
    ("http://api.test/", "http://api.test:8080/", False),
    ("https://api.test/", "https://api.test:80/", False),
    ("http://api.test/", "http://www.api.test/", False),
])
def test_origin_is_scheme_host_and_port_with_default_ports(a: str, b: str, same: bool) -> None:
    assert (origin(URL(a)) == origin(URL(b))) is same
