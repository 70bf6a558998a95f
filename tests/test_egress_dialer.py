"""The egress dialer against real sockets on loopback: denied destinations never see a connection,
DNS is resolved once (rebinding cannot swap the address), the source address is what the peer sees,
TLS keeps the original name, timeouts, logging and counters."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import pytest

from appliance.egress import (
    Dialer,
    EgressDenied,
    EgressTimeout,
    EgressUnreachable,
    PolicyHolder,
    StaticResolver,
)
from appliance.errors import Forbidden
from appliance.settings import EgressSettings
from appliance.tls import local_ca


def egress(**overrides) -> EgressSettings:
    base = {"source_address": (), "mode": "default", "allow": (), "deny": (),
            "allow_private": True}
    base.update(overrides)
    return EgressSettings(**base)


class Target:
    """A TCP server that records every accepted connection's peer address."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.peers.append(writer.get_extra_info("peername")[0])
            writer.write(b"hello\n")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, host, 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def target():
    server = await Target().start()
    yield server
    await server.close()


def make_dialer(resolver=None, **overrides) -> Dialer:
    return Dialer(PolicyHolder(egress(**overrides)), resolver=resolver or StaticResolver({}))


async def read_line(dialer: Dialer, host: str, port: int, **kwargs) -> bytes:
    reader, writer = await dialer.connect(host, port, purpose="test", timeout=5, **kwargs)
    try:
        return await reader.readline()
    finally:
        writer.close()


async def test_allowed_connection_reaches_the_target(target):
    dialer = make_dialer()
    assert await read_line(dialer, "127.0.0.1", target.port) == b"hello\n"
    assert target.peers == ["127.0.0.1"]


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "127.0.0.1."])
async def test_legacy_spellings_connect_to_the_address_they_mean(target, spelling):
    dialer = make_dialer()
    assert await read_line(dialer, spelling, target.port) == b"hello\n"
    assert target.peers == ["127.0.0.1"]


async def test_a_denied_connection_never_opens_a_socket_to_the_target(target):
    dialer = make_dialer(deny=("127.0.0.1",))
    for spelling in ("127.0.0.1", "2130706433", "0x7f.1", "::ffff:127.0.0.1", "[::ffff:127.0.0.1]"):
        with pytest.raises(EgressDenied) as caught:
            await dialer.connect(spelling, target.port, purpose="test", timeout=2)
        assert caught.value.rule == "deny: 127.0.0.1"
    await asyncio.sleep(0.2)
    assert target.peers == []


async def test_the_appliance_own_listener_is_denied(target):
    holder = PolicyHolder(egress())
    holder.set_own_listeners([("127.0.0.1", target.port)])
    dialer = Dialer(holder, resolver=StaticResolver({"me.example": ["127.0.0.1"]}))
    for host in ("127.0.0.1", "127.1", "me.example", "::ffff:7f00:1"):
        with pytest.raises(EgressDenied, match="appliance's own listener"):
            await dialer.connect(host, target.port, purpose="test", timeout=2)
    await asyncio.sleep(0.1)
    assert target.peers == []


async def test_wildcard_own_listener_is_denied_on_every_local_address():
    listener = await Target().start("0.0.0.0")
    try:
        holder = PolicyHolder(egress())
        holder.set_own_listeners([("0.0.0.0", listener.port)])
        dialer = Dialer(holder, resolver=StaticResolver({}))
        for host in ("127.0.0.1", "127.0.0.2", "127.42.0.1"):
            with pytest.raises(EgressDenied, match="own listener"):
                await dialer.connect(host, listener.port, purpose="test", timeout=2)
        await asyncio.sleep(0.1)
        assert listener.peers == []
    finally:
        await listener.close()


async def test_dns_rebinding_cannot_swap_the_checked_address(target):
    # First answer allowed, the second would be metadata: the dialer asks once and connects to
    # the address it checked.
    resolver = StaticResolver({"rebind.example": [["127.0.0.1"], ["169.254.169.254"]]})
    dialer = make_dialer(resolver)
    assert await read_line(dialer, "rebind.example", target.port) == b"hello\n"
    assert resolver.lookups == {"rebind.example": 1}
    assert target.peers == ["127.0.0.1"]
    # The next connection resolves again, gets the metadata address, and is denied.
    with pytest.raises(EgressDenied, match="cloud metadata"):
        await dialer.connect("rebind.example", target.port, purpose="test", timeout=2)
    assert resolver.lookups == {"rebind.example": 2}
    assert target.peers == ["127.0.0.1"]


async def test_rebinding_the_other_way_is_denied_on_the_first_answer(target):
    resolver = StaticResolver({"rebind.example": [["169.254.169.254"], ["127.0.0.1"]]})
    dialer = make_dialer(resolver)
    with pytest.raises(EgressDenied, match="cloud metadata"):
        await dialer.connect("rebind.example", target.port, purpose="test", timeout=2)
    assert resolver.lookups == {"rebind.example": 1}
    await asyncio.sleep(0.1)
    assert target.peers == []


async def test_one_bad_address_among_good_ones_denies_the_name(target):
    resolver = StaticResolver({"mixed.example": ["127.0.0.1", "::ffff:169.254.169.254"]})
    dialer = make_dialer(resolver)
    with pytest.raises(EgressDenied) as caught:
        await dialer.connect("mixed.example", target.port, purpose="test", timeout=2)
    assert caught.value.rule == "always-deny: cloud metadata"
    assert caught.value.decision.addresses == ["127.0.0.1", "169.254.169.254"]
    await asyncio.sleep(0.1)
    assert target.peers == []


async def test_metadata_names_are_denied_without_asking_dns():
    resolver = StaticResolver({"metadata.google.internal": ["127.0.0.1"]})
    dialer = make_dialer(resolver)
    for name in ("metadata.google.internal.", "METADATA.GOOGLE.INTERNAL"):
        with pytest.raises(EgressDenied, match="cloud metadata"):
            await dialer.connect(name, 80, purpose="test", timeout=2)
    assert resolver.lookups == {}


async def test_denial_is_a_403_naming_rule_and_destination():
    dialer = make_dialer()
    with pytest.raises(EgressDenied) as caught:
        await dialer.connect("169.254.169.254", 80, purpose="test", timeout=2)
    error = caught.value
    assert isinstance(error, Forbidden)
    assert (error.status, error.code) == (403, "egress_denied")
    assert error.message == \
        "egress to 169.254.169.254:80 denied by rule 'always-deny: cloud metadata'"
    with pytest.raises(EgressDenied) as caught:
        await dialer.connect("fd00:ec2::254", 80, purpose="test", timeout=2)
    assert "[fd00:ec2::254]:80" in caught.value.message


@pytest.mark.parametrize("source", [("127.0.0.2",), ("127.0.0.2", "::1")])
async def test_the_peer_sees_the_source_address(target, source):
    dialer = make_dialer(source_address=source)
    assert await read_line(dialer, "127.0.0.1", target.port) == b"hello\n"
    plain = make_dialer()
    assert await read_line(plain, "127.0.0.1", target.port) == b"hello\n"
    assert target.peers == ["127.0.0.2", "127.0.0.1"]


async def test_ipv6_source_address_is_used_for_ipv6():
    listener = await Target().start("::1")
    try:
        dialer = make_dialer(source_address=("127.0.0.2", "::1"))
        assert await read_line(dialer, "::1", listener.port) == b"hello\n"
        assert listener.peers == ["::1"]
        v4_only = make_dialer(source_address=("127.0.0.2",))
        with pytest.raises(EgressDenied, match="no source address"):
            await v4_only.connect("::1", listener.port, purpose="test", timeout=2)
        assert listener.peers == ["::1"]
    finally:
        await listener.close()


async def test_a_source_address_not_on_this_host_fails_clearly(target):
    dialer = make_dialer(source_address=("192.0.2.123",))
    with pytest.raises(EgressUnreachable, match=r"127\.0\.0\.1") as caught:
        await dialer.connect("127.0.0.1", target.port, purpose="test", timeout=2)
    assert caught.value.status == 502
    assert target.peers == []


async def test_policy_changes_apply_to_the_next_connection(target):
    holder = PolicyHolder(egress())
    dialer = Dialer(holder, resolver=StaticResolver({}))
    assert await read_line(dialer, "127.0.0.1", target.port) == b"hello\n"
    holder.update(egress(mode="strict", allow=("db.example.com",)))
    with pytest.raises(EgressDenied, match="strict: not in allow list"):
        await dialer.connect("127.0.0.1", target.port, purpose="test", timeout=2)
    holder.update(egress(source_address=("127.0.0.3",)))
    assert await read_line(dialer, "127.0.0.1", target.port) == b"hello\n"
    assert target.peers == ["127.0.0.1", "127.0.0.3"]


async def test_only_checked_addresses_are_tried_in_order(target):
    # The first address refuses (nothing listens on 127.0.0.9 at that port), the second works.
    resolver = StaticResolver({"two.example": ["127.0.0.9", "127.0.0.1"]})
    dialer = make_dialer(resolver)
    assert await read_line(dialer, "two.example", target.port) == b"hello\n"
    assert target.peers == ["127.0.0.1"]


async def test_refused_connection_is_a_502():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dialer = make_dialer()
    with pytest.raises(EgressUnreachable, match=f"connection refused by 127.0.0.1 port {port}"):
        await dialer.connect("127.0.0.1", port, purpose="test", timeout=2)


async def test_a_name_that_does_not_resolve_is_a_502():
    dialer = make_dialer()
    with pytest.raises(EgressUnreachable,
                       match=r"the name nowhere\.example does not resolve to an address"):
        await dialer.connect("nowhere.example", 5432, purpose="test", timeout=2)


async def test_connect_timeout_applies():
    # A listener with a full accept queue drops further SYNs: the connection hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        dialer = make_dialer()
        started = asyncio.get_running_loop().time()
        with pytest.raises(EgressTimeout) as caught:
            await dialer.connect("127.0.0.1", port, purpose="test", timeout=0.5)
        elapsed = asyncio.get_running_loop().time() - started
        assert 0.4 < elapsed < 3
        assert caught.value.status == 504
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


async def test_a_slow_resolver_counts_against_the_timeout():
    class Slow:
        async def resolve(self, name, port):
            await asyncio.sleep(30)
            return ["127.0.0.1"]

    dialer = make_dialer(Slow())
    with pytest.raises(EgressTimeout, match=r"resolving slow\.example:80 timed out"):
        await dialer.connect("slow.example", 80, purpose="test", timeout=0.2)


async def test_a_resolver_answering_garbage_is_refused():
    dialer = make_dialer(StaticResolver({"weird.example": ["not-an-address"]}))
    decision = await dialer.resolve_and_check("weird.example", 80)
    assert (decision.allowed, decision.rule) == (False, "malformed destination")


async def test_tls_keeps_the_original_name_for_sni_and_verification(tmp_path, target):
    leaf = local_ca.ensure_leaf(tmp_path, ("db.test",))
    ca = local_ca.ensure_ca(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    seen_sni: list[str | None] = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: seen_sni.append(name)
    tls_target = await Target().start(ssl_context=server_ctx)
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        dialer = make_dialer(StaticResolver({"db.test": ["127.0.0.1"]}))
        assert await read_line(dialer, "db.test", tls_target.port, ssl=client_ctx) == b"hello\n"
        assert seen_sni == ["db.test"]
        # Connecting by address, the certificate for db.test does not match: verification is real.
        with pytest.raises(ssl.SSLCertVerificationError):
            await read_line(dialer, "127.0.0.1", tls_target.port, ssl=client_ctx)
    finally:
        await tls_target.close()


async def test_create_connection_returns_a_transport_to_the_checked_address(target):
    dialer = make_dialer(StaticResolver({"svc.example": ["127.0.0.1"]}))
    received = asyncio.get_running_loop().create_future()

    class Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            if not received.done():
                received.set_result(data)

    transport, _ = await dialer.create_connection(Proto, "svc.example", target.port,
                                                  purpose="test", timeout=2)
    try:
        assert await asyncio.wait_for(received, 2) == b"hello\n"
        assert transport.get_extra_info("peername")[0] == "127.0.0.1"
    finally:
        transport.close()


async def test_decisions_are_logged_as_metadata_and_counted(target, caplog):
    dialer = make_dialer()
    caplog.set_level(logging.INFO, logger="appliance.egress")
    _reader, writer = await dialer.connect("127.0.0.1", target.port, purpose="postgres",
                                           datasource="ds_1", timeout=2)
    writer.close()
    with pytest.raises(EgressDenied):
        await dialer.connect("169.254.169.254", 80, purpose="rest", datasource="ds_2", timeout=2)
    records = [r for r in caplog.records if r.name == "appliance.egress"]
    assert [(r.getMessage(), r.purpose, r.datasource, r.destination, r.rule, r.allowed)
            for r in records] == [
        ("egress allowed", "postgres", "ds_1", f"127.0.0.1:{target.port}", "default: allowed",
         True),
        ("egress denied", "rest", "ds_2", "169.254.169.254:80", "always-deny: cloud metadata",
         False),
    ]
    snapshot = dialer.counters.snapshot()
    assert snapshot["decisions"] == [
        {"purpose": "postgres", "allowed": True, "rule": "default: allowed", "count": 1},
        {"purpose": "rest", "allowed": False, "rule": "always-deny: cloud metadata", "count": 1},
    ]
    assert snapshot["connections"] == [{"purpose": "postgres", "outcome": "connected", "count": 1}]


async def test_probe_reports_decision_connection_and_source(target):
    dialer = make_dialer(StaticResolver({"db.example": ["127.0.0.1"]}),
                         source_address=("127.0.0.2",))
    result = await dialer.probe("db.example", target.port, timeout=2)
    assert (result.allowed, result.rule, result.addresses, result.connected,
            result.source_address) == (True, "default: allowed", ["127.0.0.1"], True, "127.0.0.2")
    denied = await dialer.probe("169.254.169.254", 80)
    assert (denied.allowed, denied.rule, denied.connected) == \
        (False, "always-deny: cloud metadata", False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    refused = await dialer.probe("127.0.0.1", closed_port, timeout=2)
    assert (refused.allowed, refused.connected) == (True, False)
    assert refused.error and refused.error.startswith("connection refused by 127.0.0.1 port")
    unresolved = await dialer.probe("nowhere.example", 80)
    assert (unresolved.allowed, unresolved.rule) == (False, "name did not resolve")


async def test_system_resolver_resolves_localhost(target):
    dialer = Dialer(PolicyHolder(egress()))
    decision = await dialer.resolve_and_check("localhost", target.port)
    assert decision.allowed is True
    assert "127.0.0.1" in decision.addresses
    denied = await Dialer(PolicyHolder(egress(allow_private=False))).resolve_and_check(
        "localhost", target.port)
    assert (denied.allowed, denied.rule) == (False, "private network not allowed")


def test_addresses_to_allow():
    assert make_dialer(source_address=("127.0.0.2", "::1")).addresses_to_allow() == \
        ["127.0.0.2", "::1"]
    detected = make_dialer().addresses_to_allow()
    # Whatever this host's routes are, each answer is an address the kernel would use.
    for address in detected:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
