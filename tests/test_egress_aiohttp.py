"""The aiohttp client hook: real aiohttp servers on 127.0.0.2/127.0.0.3 see the source address,
every connection and every redirect hop is checked, Host and SNI keep the original name."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from aiohttp import web

from appliance.egress import Dialer, EgressDenied, PolicyHolder, StaticResolver
from appliance.egress.aiohttp_hook import (
    EgressConnector,
    egress_session,
    request_following_redirects,
)
from appliance.errors import UpstreamError
from appliance.settings import EgressSettings
from appliance.tls import local_ca


def egress(**overrides) -> EgressSettings:
    base = {"source_address": (), "mode": "default", "allow": (), "deny": (),
            "allow_private": True}
    base.update(overrides)
    return EgressSettings(**base)


class Upstream:
    """A real aiohttp server that reports who called it and can redirect."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.redirect_to = ""

    async def start(self, host: str, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        async def whoami(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            return web.json_response({
                "peer": request.remote,
                "host": request.host,
                "authorization": request.headers.get("Authorization"),
                "method": request.method,
            })

        async def redirect(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            status = int(request.query.get("status", "302"))
            raise web.HTTPFound(self.redirect_to) if status == 302 else \
                web.HTTPSeeOther(self.redirect_to)

        app = web.Application()
        app.router.add_route("*", "/whoami", whoami)
        app.router.add_route("*", "/redirect", redirect)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, 0, ssl_context=ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def upstream():
    server = await Upstream().start("127.0.0.2")
    yield server
    await server.close()


@pytest.fixture
async def other():
    server = await Upstream().start("127.0.0.3")
    yield server
    await server.close()


def dialer_for(resolver=None, **overrides) -> Dialer:
    return Dialer(PolicyHolder(egress(**overrides)), resolver=resolver or StaticResolver({}))


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.json()


@pytest.mark.parametrize(("source", "peer"), [(("127.0.0.2",), "127.0.0.2"), ((), "127.0.0.1")])
async def test_the_server_sees_the_source_address(upstream, source, peer):
    dialer = dialer_for(source_address=source)
    async with egress_session(dialer, purpose="rest", datasource="ds") as session:
        body = await get_json(session, f"http://127.0.0.2:{upstream.port}/whoami")
    assert body["peer"] == peer


async def test_host_header_keeps_the_original_name(upstream):
    dialer = dialer_for(StaticResolver({"api.example": ["127.0.0.2"]}))
    async with egress_session(dialer, purpose="rest") as session:
        body = await get_json(session, f"http://API.example:{upstream.port}/whoami")
    assert body["host"].lower() == f"api.example:{upstream.port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal./computeMetadata/v1/",
        "http://METADATA.GOOGLE.INTERNAL/",
        "http://evil.example/",
    ],
)
async def test_metadata_urls_are_denied(url):
    dialer = dialer_for(StaticResolver({"evil.example": ["169.254.169.254"]}))
    async with egress_session(dialer, purpose="rest") as session:
        with pytest.raises(EgressDenied, match="always-deny: cloud metadata"):
            await session.get(url)


async def test_a_denied_url_never_reaches_the_server(upstream):
    dialer = dialer_for(deny=("127.0.0.2",))
    async with egress_session(dialer, purpose="rest") as session:
        with pytest.raises(EgressDenied, match=r"deny: 127\.0\.0\.2"):
            await session.get(f"http://127.0.0.2:{upstream.port}/whoami")
    assert upstream.hits == []


async def test_the_appliance_own_https_port_is_denied(tmp_path):
    leaf = local_ca.ensure_leaf(tmp_path, ("localhost", "127.0.0.2"))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    appliance = await Upstream().start("127.0.0.2", ssl_context=server_ctx)
    try:
        holder = PolicyHolder(egress())
        holder.set_own_listeners([("127.0.0.2", appliance.port)])
        dialer = Dialer(holder, resolver=StaticResolver({"me.example": ["127.0.0.2"]}))
        async with egress_session(dialer, purpose="rest") as session:
            for url in (f"https://127.0.0.2:{appliance.port}/whoami",
                        f"https://me.example:{appliance.port}/whoami",
                        f"https://[::ffff:127.0.0.2]:{appliance.port}/whoami"):
                with pytest.raises(EgressDenied, match="appliance's own listener"):
                    await session.get(url)
        assert appliance.hits == []
    finally:
        await appliance.close()


async def test_each_new_connection_is_checked_again(upstream):
    resolver = StaticResolver({"flip.example": [["127.0.0.2"], ["169.254.169.254"]]})
    dialer = dialer_for(resolver)
    # force_close: every request is a new connection, so a rebinding answer is seen and refused.
    connector = EgressConnector(dialer, purpose="rest", force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        body = await get_json(session, f"http://flip.example:{upstream.port}/whoami")
        assert body["peer"] == "127.0.0.1"
        with pytest.raises(EgressDenied, match="cloud metadata"):
            await session.get(f"http://flip.example:{upstream.port}/whoami")
    assert resolver.lookups == {"flip.example": 2}
    assert upstream.hits == ["/whoami"]


async def test_tls_sni_and_verification_use_the_original_name(tmp_path, upstream):
    leaf = local_ca.ensure_leaf(tmp_path, ("api.test",))
    ca = local_ca.ensure_ca(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    seen: list[str | None] = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: seen.append(name)
    tls_upstream = await Upstream().start("127.0.0.2", ssl_context=server_ctx)
    try:
        dialer = dialer_for(StaticResolver({"api.test": ["127.0.0.2"]}),
                            source_address=("127.0.0.2",))
        client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        async with egress_session(dialer, purpose="rest") as session:
            async with session.get(f"https://api.test:{tls_upstream.port}/whoami",
                                   ssl=client_ctx) as response:
                body = await response.json()
        assert seen == ["api.test"]
        assert body["peer"] == "127.0.0.2"
    finally:
        await tls_upstream.close()


async def test_redirect_to_a_denied_host_is_refused_hop_by_hop(upstream):
    upstream.redirect_to = "http://metadata.google.internal/computeMetadata/v1/"
    dialer = dialer_for()
    async with egress_session(dialer, purpose="rest") as session:
        with pytest.raises(EgressDenied, match="cloud metadata"):
            await request_following_redirects(
                session, "GET", f"http://127.0.0.2:{upstream.port}/redirect")
    assert upstream.hits == ["/redirect"]


async def test_redirect_to_a_denied_network_never_reaches_it(upstream, other):
    upstream.redirect_to = f"http://127.0.0.3:{other.port}/whoami"
    dialer = dialer_for(deny=("127.0.0.3",))
    async with egress_session(dialer, purpose="rest") as session:
        with pytest.raises(EgressDenied, match=r"deny: 127\.0\.0\.3"):
            await request_following_redirects(
                session, "GET", f"http://127.0.0.2:{upstream.port}/redirect")
    assert other.hits == []


async def test_allowed_redirects_are_followed_and_credentials_stay_home(upstream, other):
    upstream.redirect_to = f"http://127.0.0.3:{other.port}/whoami"
    dialer = dialer_for(source_address=("127.0.0.2",))
    async with egress_session(dialer, purpose="rest") as session:
        response = await request_following_redirects(
            session, "POST", f"http://127.0.0.2:{upstream.port}/redirect?status=303",
            headers={"Authorization": "Bearer sekrit"}, json={"a": 1})
        body = await response.json()
        response.release()
    assert body == {"peer": "127.0.0.2", "host": f"127.0.0.3:{other.port}",
                    "authorization": None, "method": "GET"}
    # Same origin keeps the header.
    upstream.redirect_to = f"http://127.0.0.2:{upstream.port}/whoami"
    async with egress_session(dialer, purpose="rest") as session:
        response = await request_following_redirects(
            session, "GET", f"http://127.0.0.2:{upstream.port}/redirect",
            headers={"Authorization": "Bearer sekrit"})
        body = await response.json()
        response.release()
    assert body["authorization"] == "Bearer sekrit"


async def test_redirect_loops_and_odd_schemes_are_refused(upstream):
    dialer = dialer_for()
    upstream.redirect_to = f"http://127.0.0.2:{upstream.port}/redirect"
    async with egress_session(dialer, purpose="rest") as session:
        with pytest.raises(UpstreamError, match="too many redirects"):
            await request_following_redirects(
                session, "GET", f"http://127.0.0.2:{upstream.port}/redirect", max_redirects=3)
        upstream.redirect_to = "file:///etc/passwd"
        with pytest.raises(UpstreamError, match="unsupported location"):
            await request_following_redirects(
                session, "GET", f"http://127.0.0.2:{upstream.port}/redirect")


async def test_redirect_helper_refuses_an_unchecked_session():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TypeError, match="EgressConnector"):
            await request_following_redirects(session, "GET", "http://127.0.0.1/")


def test_connector_refuses_its_own_resolver_or_binding():
    dialer = dialer_for()
    for kwarg in ({"local_addr": ("127.0.0.1", 0)}, {"use_dns_cache": True}):
        with pytest.raises(TypeError, match="the dialer decides"):
            EgressConnector(dialer, purpose="rest", **kwarg)


def test_the_aiohttp_seam_still_exists():
    # The hook overrides TCPConnector._resolve_host; if aiohttp renames it, this must fail loudly.
    assert "_resolve_host" in vars(aiohttp.TCPConnector)
    assert "socket_factory" in aiohttp.TCPConnector.__init__.__code__.co_varnames
