"""Egress policy: address normalisation, the SSRF corpus, always-deny, deny/allow lists, strict
mode, allow_private and the appliance's own listeners. Pure decisions, no sockets to targets."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.egress import AddressError, EgressPolicy, PolicyHolder, parse_host, parse_rule
from appliance.egress.addresses import addresses_to_check, embedded_ipv4, parse_ipv4_legacy
from appliance.settings import EgressSettings

HYPOTHESIS_EXAMPLES = int(os.environ.get("EGRESS_HYPOTHESIS_EXAMPLES", "200"))


def egress(**overrides) -> EgressSettings:
    base = {"source_address": (), "mode": "default", "allow": (), "deny": (),
            "allow_private": True}
    base.update(overrides)
    return EgressSettings(**base)


def decide(host: str, port: int = 443, addresses=(), **overrides):
    policy = EgressPolicy(egress(**overrides))
    return policy.decide(host, port, [ipaddress.ip_address(a) for a in addresses])


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("169.16689662", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("[::1]", "::1"),
        ("[::FFFF:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
    ],
)
def test_ip_literals_in_every_spelling(text, expected):
    host = parse_host(text)
    assert str(host.ip) == expected
    assert host.name is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("METADATA.GOOGLE.INTERNAL", "metadata.google.internal"),
        ("metadata.google.internal.", "metadata.google.internal"),
        ("Db.Example.COM", "db.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_names_are_normalised(text, expected):
    assert parse_host(text).name == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "08", "1.2.3.4.5", "1.2.3.256", "256.1.1.1", "0x1.0x100.1.1", "a..b", "-a.example",
     "exa mple.com", "http://x", "user@host", "a/b", "[::1", "::g", "x" * 300, "a\x00b",
     "4294967296", "example.123"],
)
def test_malformed_hosts_are_refused(text):
    with pytest.raises(AddressError):
        parse_host(text)
    assert decide(text).allowed is False
    assert decide(text).rule == "malformed destination"


@pytest.mark.parametrize(
    ("ipv6", "ipv4"),
    [
        ("::ffff:169.254.169.254", "169.254.169.254"),  # IPv4-mapped
        ("::169.254.169.254", "169.254.169.254"),  # IPv4-compatible
        ("::ffff:0:169.254.169.254", "169.254.169.254"),  # SIIT IPv4-translated
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64 well-known prefix
        ("64:ff9b:1:a9fe:a9:fe00::", "169.254.169.254"),  # NAT64 local-use, /48 layout
        ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),  # NAT64 local-use, /96 layout
        ("2002:a9fe:a9fe::", "169.254.169.254"),  # 6to4
        ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254"),  # Teredo client (inverted)
        ("2001:db8::5efe:169.254.169.254", "169.254.169.254"),  # ISATAP
        ("2001:db8::200:5efe:169.254.169.254", "169.254.169.254"),  # ISATAP, universal bit
    ],
)
def test_every_embedded_ipv4_is_found(ipv6, ipv4):
    found = embedded_ipv4(ipaddress.IPv6Address(ipv6))
    assert ipaddress.IPv4Address(ipv4) in found


def test_plain_ipv6_has_no_embedded_ipv4():
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) == []
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) == []
    v4 = ipaddress.IPv4Address("1.2.3.4")
    assert addresses_to_check(v4) == [v4]


def _encodings(ip: ipaddress.IPv4Address) -> list[str]:
    n = int(ip)
    o = ip.packed
    return [
        str(ip), str(n), hex(n), "0" + oct(n)[2:],
        ".".join("0" + oct(b)[2:] if b else "0" for b in o),
        ".".join(hex(b) for b in o),
        f"{o[0]}.{(n & 0xFFFFFF)}",
        f"{o[0]}.{o[1]}.{(n & 0xFFFF)}",
        f"::ffff:{ip}", f"[::ffff:{ip}]", f"::{ip}", f"::ffff:0:{ip}",
        str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | n)),
        str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80))),
        str(ipaddress.IPv6Address((0x20010000 << 96) | (0x4136E378 << 64) | (n ^ 0xFFFFFFFF))),
        f"{ip}.",
    ]


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(st.integers(min_value=int(ipaddress.IPv4Address("169.254.0.0")),
                   max_value=int(ipaddress.IPv4Address("169.254.255.255"))))
def test_link_local_in_any_encoding_is_always_denied(number):
    ip = ipaddress.IPv4Address(number)
    for text in _encodings(ip):
        decision = decide(text, allow=("0.0.0.0/0", "::/0"), mode="strict")
        assert decision.allowed is False, text
        assert decision.rule in ("always-deny: link-local", "always-deny: cloud metadata"), text


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_legacy_ipv4_parser_matches_inet_aton(number):
    ip = ipaddress.IPv4Address(number)
    for text in _encodings(ip)[:8]:
        assert parse_ipv4_legacy(text) == ip, text
        assert socket.inet_aton(text) == ip.packed, text


# --- the SSRF corpus -------------------------------------------------------------------------

METADATA_CORPUS = [
    "169.254.169.254", "0xa9fea9fe", "2852039166", "0251.0376.0251.0376", "0xa9.0xfe.0xa9.0xfe",
    "169.254.43518", "0251.254.169.254", "169.254.169.254.", "::ffff:169.254.169.254",
    "[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "[::169.254.169.254]", "::a9fe:a9fe",
    "64:ff9b::a9fe:a9fe", "64:ff9b::169.254.169.254", "2002:a9fe:a9fe::", "2002:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:5601:5601", "fd00:ec2::254", "[FD00:EC2::254]",
    "100.100.100.200", "168.63.129.16", "169.254.170.2", "metadata.google.internal",
    "metadata.google.internal.", "METADATA.GOOGLE.INTERNAL", "Metadata.Google.Internal.",
    "metadata", "metadata.azure.com", "instance-data.ec2.internal", "x.metadata.google.internal",
    "metadata.goog",
]


@pytest.mark.parametrize("host", METADATA_CORPUS)
@pytest.mark.parametrize("mode", ["default", "strict"])
def test_metadata_is_always_denied_whatever_the_lists(host, mode):
    decision = decide(host, 80, addresses=["93.184.216.34"], mode=mode,
                      allow=("0.0.0.0/0", "::/0", "metadata.google.internal", "*.internal"))
    assert decision.allowed is False
    assert decision.rule == "always-deny: cloud metadata"


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("169.254.1.1", "always-deny: link-local"),
        ("fe80::1", "always-deny: link-local"),
        ("fe80::1%eth0", "always-deny: link-local"),
        ("[fe80::a9fe:a9fe%25lo]", "always-deny: link-local"),
        ("::ffff:169.254.7.7", "always-deny: link-local"),
        ("0.0.0.0", "always-deny: unspecified"),
        ("0", "always-deny: unspecified"),
        ("0.1.2.3", "always-deny: unspecified"),
        ("::", "always-deny: unspecified"),
        ("[::]", "always-deny: unspecified"),
        ("::ffff:0.0.0.0", "always-deny: unspecified"),
        ("224.0.0.1", "always-deny: multicast"),
        ("239.255.255.250", "always-deny: multicast"),
        ("ff02::1", "always-deny: multicast"),
        ("::ffff:224.0.0.251", "always-deny: multicast"),
        ("255.255.255.255", "always-deny: broadcast"),
        ("4294967295", "always-deny: broadcast"),
        ("240.0.0.1", "always-deny: reserved"),
        ("100::1", "always-deny: reserved"),
    ],
)
def test_always_denied_ranges(host, rule):
    decision = decide(host, 5432, mode="strict", allow=("0.0.0.0/0", "::/0"))
    assert (decision.allowed, decision.rule) == (False, rule)


@pytest.mark.parametrize(
    "addresses",
    [["169.254.169.254"], ["::ffff:169.254.169.254"], ["93.184.216.34", "169.254.169.254"],
     ["169.254.169.254", "93.184.216.34"], ["64:ff9b::a9fe:a9fe"], ["fd00:ec2::254"]],
)
def test_a_name_resolving_to_metadata_is_denied(addresses):
    decision = decide("innocent.example.com", 80, addresses=addresses)
    assert decision.allowed is False
    assert decision.rule == "always-deny: cloud metadata"
    assert "169.254.169.254" in decision.addresses or "fd00:ec2::254" in decision.addresses or (
        "64:ff9b::a9fe:a9fe" in decision.addresses
    )


LOOPBACK_CORPUS = ["127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "127.0.0.1.",
                   "[::1]", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1",
                   "2002:7f00:1::", "0x7f000001", "127.255.255.254"]


@pytest.mark.parametrize("host", LOOPBACK_CORPUS)
def test_loopback_is_private(host):
    denied = decide(host, 8080, allow_private=False)
    assert (denied.allowed, denied.rule) == (False, "private network not allowed")
    assert decide(host, 8080, allow_private=True).allowed is True


@pytest.mark.parametrize("host", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
                                  "fd12:3456::1", "::ffff:10.0.0.1", "2002:0a00:0001::"])
def test_private_networks(host):
    assert decide(host, allow_private=False).rule == "private network not allowed"
    assert decide(host, allow_private=True).rule == "default: allowed"


def test_a_name_resolving_to_a_private_address_is_private():
    d = decide("db.internal.example", 5432, addresses=["10.0.0.5"], allow_private=False)
    assert (d.allowed, d.rule, d.addresses) == (False, "private network not allowed", ["10.0.0.5"])


def test_unresolved_name_is_not_allowed():
    d = decide("nothing.example", 80, addresses=[])
    assert (d.allowed, d.rule) == (False, "name did not resolve")


@pytest.mark.parametrize("port", [0, -1, 65536, True])
def test_bad_ports(port):
    assert decide("1.2.3.4", port).rule == "malformed destination"


# --- lists and modes -------------------------------------------------------------------------


def test_deny_list_by_cidr_name_wildcard_and_port():
    deny = ("10.0.0.0/8", "bad.example.com", "*.evil.example", "db.example.com:5433",
            "[2001:db8::/32]:22", "192.0.2.7:25")
    assert decide("10.9.9.9", deny=deny).rule == "deny: 10.0.0.0/8"
    assert decide("::ffff:10.9.9.9", deny=deny).rule == "deny: 10.0.0.0/8"
    assert decide("64:ff9b::10.9.9.9", deny=deny).rule == "deny: 10.0.0.0/8"
    assert decide("BAD.example.com.", deny=deny).rule == "deny: bad.example.com"
    assert decide("a.b.evil.example", deny=deny).rule == "deny: *.evil.example"
    assert decide("evil.example", addresses=["1.1.1.1"], deny=deny).allowed is True
    assert decide("db.example.com", 5433, deny=deny).rule == "deny: db.example.com:5433"
    assert decide("db.example.com", 5432, addresses=["1.1.1.1"], deny=deny).allowed is True
    assert decide("2001:db8::1", 22, deny=deny).rule == "deny: [2001:db8::/32]:22"
    assert decide("2001:db8::1", 23, deny=deny).allowed is True
    assert decide("192.0.2.7", 25, deny=deny).rule == "deny: 192.0.2.7:25"
    # A name that resolves into a denied network is denied.
    assert decide("x.example", addresses=["10.1.1.1"], deny=deny).rule == "deny: 10.0.0.0/8"


def test_deny_wins_over_allow():
    d = decide("10.0.0.1", mode="strict", allow=("10.0.0.0/8",), deny=("10.0.0.1",))
    assert (d.allowed, d.rule) == (False, "deny: 10.0.0.1")


def test_strict_mode_allows_only_its_list():
    lists = {"mode": "strict",
             "allow": ("db.example.com:5432", "10.0.0.0/8", "*.corp.example", "[fd00:1::/64]")}
    assert decide("db.example.com", 5432, ["203.0.113.5"], **lists).rule == \
        "allow: db.example.com:5432"
    assert decide("db.example.com", 5433, ["203.0.113.5"], **lists).rule == \
        "strict: not in allow list"
    assert decide("10.20.30.40", 1, **lists).rule == "allow: 10.0.0.0/8"
    assert decide("api.corp.example", 443, ["198.51.100.1"], **lists).rule == \
        "allow: *.corp.example"
    assert decide("corp.example", 443, ["198.51.100.1"], **lists).rule == \
        "strict: not in allow list"
    assert decide("fd00:1::5", 443, **lists).rule == "allow: [fd00:1::/64]"
    assert decide("8.8.8.8", 53, **lists).rule == "strict: not in allow list"
    # A name resolving partly outside an allowed network is not allowed by that network.
    assert decide("mixed.example", 1, ["10.0.0.1", "8.8.8.8"], **lists).rule == \
        "strict: not in allow list"
    assert decide("inside.example", 1, ["10.0.0.1", "10.0.0.2"], **lists).rule == \
        "allow: 10.0.0.0/8"


def test_explicit_allow_overrides_allow_private_but_not_always_deny():
    d = decide("10.0.0.5", allow_private=False, allow=("10.0.0.5",))
    assert (d.allowed, d.rule) == (True, "allow: 10.0.0.5")
    d = decide("169.254.169.254", allow_private=False, allow=("169.254.0.0/16",))
    assert d.allowed is False


@pytest.mark.parametrize(
    ("text", "network", "name", "port"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None, None),
        ("10.0.0.0/8:5432", "10.0.0.0/8", None, 5432),
        ("[fd00::/8]:5432", "fd00::/8", None, 5432),
        ("fd00::/8:5432", "fd00::/8", None, 5432),
        ("::1/128", "::1/128", None, None),
        ("2130706433", "127.0.0.1/32", None, None),
        ("127.1:80", "127.0.0.1/32", None, 80),
        ("DB.Example.com.:5432", None, "db.example.com", 5432),
        ("*.example.com", None, "example.com", None),
    ],
)
def test_rule_parsing(text, network, name, port):
    rule = parse_rule(text)
    assert (str(rule.network) if rule.network else None, rule.name, rule.port) == \
        (network, name, port)


@pytest.mark.parametrize("text", ["", "10.0.0.0/33", "host:0", "host:70000", "*.1.2.3.4",
                                  "a b", "1.2.3.4.5", "[::1]:x"])
def test_bad_rules_are_refused(text):
    with pytest.raises(ValueError, match=r".+"):
        parse_rule(text)


def test_bad_settings_leave_the_old_policy_in_place():
    holder = PolicyHolder(egress())
    with pytest.raises(ValueError, match="not a CIDR"):
        holder.update(egress(deny=("10.0.0.0/99",)))
    with pytest.raises(ValueError, match="mode"):
        holder.update(egress(mode="lenient"))
    assert holder.decide("10.0.0.1", 80).allowed is True
    holder.update(egress(deny=("10.0.0.0/8",)))
    assert holder.decide("10.0.0.1", 80).rule == "deny: 10.0.0.0/8"


# --- the appliance's own listeners -----------------------------------------------------------


def test_own_listener_on_a_specific_address():
    holder = PolicyHolder(egress())
    holder.set_own_listeners([("127.0.0.1", 8443)])
    for host in ("127.0.0.1", "127.1", "2130706433", "::ffff:127.0.0.1", "::127.0.0.1"):
        assert holder.decide(host, 8443).rule == "appliance's own listener", host
    assert holder.decide("127.0.0.1", 8444).allowed is True
    assert holder.decide("127.0.0.2", 8443).allowed is True
    assert holder.decide("name.example", 8443, [ipaddress.ip_address("127.0.0.1")]).rule == \
        "appliance's own listener"


def test_own_listener_survives_a_policy_update_and_strict_allow():
    holder = PolicyHolder(egress())
    holder.set_own_listeners([("127.0.0.1", 8443)])
    holder.update(egress(mode="strict", allow=("127.0.0.0/8",)))
    assert holder.decide("127.0.0.1", 8443).rule == "appliance's own listener"
    assert holder.decide("127.0.0.1", 9000).rule == "allow: 127.0.0.0/8"


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", ""])
def test_own_listener_on_every_interface(bind):
    holder = PolicyHolder(egress())
    holder.set_own_listeners([(bind, 443)])
    for host in ("127.0.0.1", "127.0.0.53", "::ffff:127.0.0.9"):
        assert holder.decide(host, 443).rule == "appliance's own listener", host
    if bind == "::":
        assert holder.decide("::1", 443).rule == "appliance's own listener"
    # This host's own non-loopback addresses too (whatever they are here).
    hostname_ips = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)
                    if info[0] == socket.AF_INET}
    for ip in hostname_ips:
        assert holder.decide(ip, 443).rule == "appliance's own listener", ip
    # An address that is not on this host is not the listener.
    assert holder.decide("198.51.100.77", 443).allowed is True
    assert holder.decide("127.0.0.1", 444).allowed is True


def test_own_listener_given_by_name():
    holder = PolicyHolder(egress())
    holder.set_own_listeners([("localhost", 8443)])
    assert holder.decide("127.0.0.1", 8443).rule == "appliance's own listener"
    assert holder.decide("::1", 8443).rule == "appliance's own listener"


def test_source_address_family_without_a_source_is_refused():
    d = decide("2606:4700::1111", source_address=("127.0.0.2",))
    assert (d.allowed, d.rule) == (False, "no source address for the destination's address family")
    assert decide("1.1.1.1", source_address=("127.0.0.2",)).allowed is True
    assert decide("2606:4700::1111", source_address=("127.0.0.2", "::1")).allowed is True
