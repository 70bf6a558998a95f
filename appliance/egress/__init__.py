"""Egress: the policy for outbound destinations and the one dialer every outbound connection uses.

The public face of `appliance.egress`; engines import their hook from here. Never imports the
HTTP layer, the services or the engines.
"""

from appliance.egress.addresses import (
    AddressError,
    Host,
    addresses_to_check,
    embedded_ipv4,
    parse_host,
)
from appliance.egress.dialer import (
    DEFAULT_CONNECT_TIMEOUT,
    CheckedDestination,
    Dialer,
    EgressCounters,
    EgressDenied,
    EgressTimeout,
    EgressUnreachable,
    ProbeResult,
)
from appliance.egress.policy import Decision, EgressPolicy, PolicyHolder, parse_rule
from appliance.egress.resolver import Resolver, StaticResolver, SystemResolver

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "AddressError",
    "CheckedDestination",
    "Decision",
    "Dialer",
    "EgressCounters",
    "EgressDenied",
    "EgressPolicy",
    "EgressTimeout",
    "EgressUnreachable",
    "Host",
    "PolicyHolder",
    "ProbeResult",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
    "addresses_to_check",
    "embedded_ipv4",
    "parse_host",
    "parse_rule",
]
