"""Settings: one typed, frozen object built once at start from TOML, environment and flags.

Owns every read of `os.environ` in the code base (the snapshot is taken here and nowhere else).
Never logs secret values: they are wrapped in `Secret` as soon as they are read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError
from appliance.roles import ROLES
from appliance.secret import Secret

DEFAULT_CONFIG_FILE = Path("/etc/appliance/appliance.toml")
DEFAULT_STATE_DIR = Path("/var/lib/appliance")
DEV_STATE_DIR = Path(".appliance")
ENV_PREFIX = "APPLIANCE_"

# Variables with the prefix that are not settings (read by the keyring, never logged).
ENV_NON_SETTINGS = frozenset({"APPLIANCE_ENCRYPTION_PASSWORD", "APPLIANCE_ENCRYPTION_SALT"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Endpoint:
    """A `HOST:PORT` to listen on. Port 0 asks the kernel for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerSettings:
    listen: Endpoint
    http_listen: Endpoint | None
    state_dir: Path
    max_body_bytes: int
    request_timeout: float
    shutdown_timeout: float
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-For is believed
    # Listener limits against idle and slow clients (appliance.http.connection_limits).
    handshake_timeout: float = 10.0
    first_byte_timeout: float = 10.0
    request_head_timeout: float = 10.0
    keepalive_timeout: float = 30.0
    max_connections: int = 2000
    max_connections_per_address: int = 100
    heartbeat_interval: float = 10.0  # seconds between this instance's heartbeats in the store


@dataclass(frozen=True)
class TLSSettings:
    mode: str
    names: tuple[str, ...]
    email: str
    directory: str
    ca_bundle: Path | None
    profile: str
    eab_kid: str
    eab_hmac_key: Secret[str] | None
    cert_file: Path | None
    key_file: Path | None
    check_interval: float
    renew_check_interval: float = 600.0
    order_lease: float = 30.0


@dataclass(frozen=True)
class EgressSettings:
    source_address: tuple[str, ...]
    mode: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    allow_private: bool


@dataclass(frozen=True)
class AuthSettings:
    require_2fa: tuple[str, ...]
    session_idle_timeout: float = 1800.0
    session_absolute_timeout: float = 43200.0


@dataclass(frozen=True)
class LogSettings:
    format: str
    level: str


@dataclass(frozen=True)
class MetricsSettings:
    allow: tuple[Network, ...] = ()  # clients that may scrape without a token
    datasource_names: bool = False  # label pools by datasource name (else by id)


@dataclass(frozen=True)
class StoreURL:
    """Where the store is: `sqlite` (`path`, None for the state directory's file) or `postgresql`
    (`host`, `port`, `user`, `database`). Never holds a password (see `StoreSettings`)."""

    scheme: str = "sqlite"
    path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    database: str = ""

    def __str__(self) -> str:
        if self.scheme == "sqlite":
            return f"sqlite://{self.path}" if self.path is not None else "sqlite (state directory)"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class StoreSettings:
    url: StoreURL = StoreURL()
    password_file: Path | None = None  # else the systemd credential `store-password`, if any
    tls: str = "verify-full"
    ca_file: Path | None = None


@dataclass(frozen=True)
class SinkSpec:
    """One audit sink (`[audit] sinks`): `kind` is journal, syslog or file; `target` the socket
    or file path ("" for the kind's default socket); `required` makes it fail-closed: an entry
    that cannot be written to it is not written at all (the action fails)."""

    kind: str
    target: str = ""
    required: bool = True

    @property
    def name(self) -> str:
        """As the settings spell it (`file:/var/log/appliance/audit.jsonl`): the sink's name in
        logs, metrics and the store's delivery records."""
        return f"{self.kind}:{self.target}" if self.target else self.kind


@dataclass(frozen=True)
class AuditSettings:
    keep_days: int = 0  # 0: keep every entry (as before retention existed)
    sinks: tuple[SinkSpec, ...] = ()
    anchor_interval: float = 60.0  # seconds between anchors of the chain's head
    verify_interval: float = 60.0  # seconds between background verifications of new entries


@dataclass(frozen=True)
class Environment:
    """What the process was given by its environment that is not a setting."""

    credentials_directory: Path | None = None
    notify_socket: str | None = None
    journal_stream: str | None = None  # `DEVICE:INODE` of the journal's stream (appliance.logs)
    encryption_password: Secret[str] | None = None
    encryption_salt: Secret[str] | None = None


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    tls: TLSSettings
    egress: EgressSettings
    auth: AuthSettings
    log: LogSettings
    metrics: MetricsSettings = MetricsSettings()
    store: StoreSettings = StoreSettings()
    audit: AuditSettings = AuditSettings()
    dev: bool = False
    config_file: Path | None = None
    environment: Environment = field(default_factory=Environment)


# --- value parsers: raw value (TOML value or env string) -> typed value, or ValueError -------


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    if "\x00" in value:
        raise ValueError("contains a NUL byte")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _string(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")
        return text

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def _number(minimum: float, maximum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_type_name(value)}")
        if not (minimum <= value <= maximum) or value != value:
            raise ValueError(f"must be between {minimum:g} and {maximum:g} (got {value!r})")
        return float(value)

    return parse


def _integer(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, str):
            if not re.fullmatch(r"\s*\d+\s*", value):
                raise ValueError(f"expected an integer, got {value!r}")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_type_name(value)}")
        if not (minimum <= value <= maximum):
            raise ValueError(f"must be between {minimum} and {maximum} (got {value})")
        return value

    return parse


@dataclass(frozen=True)
class _ListOf:
    """A TOML array (in the environment: a comma-separated string, split by `_read_env`)."""

    item: Callable[[Any], Any]

    def __call__(self, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_type_name(value)}")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(self.item(element))
            except ValueError as exc:
                raise ValueError(f"item {index + 1}: {exc}") from None
        return tuple(out)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


def _endpoint(value: Any) -> Endpoint:
    text = _string(value).strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]*):(\d{1,5})", text)
    if not match:
        raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
    host = match.group(1) or match.group(3) or ""
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif host and not _HOST_RE.match(host):
        raise ValueError(f"{host!r} is not a host name or address")
    return Endpoint(host or "0.0.0.0", port)  # noqa: S104 - an empty host means every interface


def _optional_endpoint(value: Any) -> Endpoint | None:
    if isinstance(value, str) and value.strip() in ("", "none", "off"):
        return None
    return _endpoint(value)


def _path(value: Any) -> Path:
    text = _string(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return Path(text).expanduser()


def _optional_path(value: Any) -> Path | None:
    text = _string(value).strip()
    return Path(text).expanduser() if text else None


def _tls_name(value: Any) -> str:
    text = _string(value).strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST_RE.match(text) and not (
        text.startswith("*.") and _HOST_RE.match(text[2:])
    ):
        raise ValueError(f"{value!r} is not a domain name or IP address")
    return text


def _email(value: Any) -> str:
    text = _string(value).strip()
    if text and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise ValueError(f"{value!r} is not an email address")
    return text


def _directory(value: Any) -> str:
    text = _string(value).strip()
    if text in ("", "production"):
        return "https://acme-v02.api.letsencrypt.org/directory"
    if text == "staging":
        return "https://acme-staging-v02.api.letsencrypt.org/directory"
    if not re.fullmatch(r"https://[^\s]+", text):
        raise ValueError(f"expected an https:// URL, 'production' or 'staging', got {value!r}")
    return text


def _ip_address(value: Any) -> str:
    text = _string(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _cidr(value: Any) -> Network:
    """A CIDR or a single address (a /32 or /128); no zone index."""
    text = _string(value).strip()
    try:
        if "%" in text:
            raise ValueError
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR or an IP address") from None


def _egress_rule(value: Any) -> str:
    """A CIDR, an address, a host name, or any of them with `:port`."""
    text = _string(value).strip().lower()
    if not text:
        raise ValueError("empty rule")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    host, port = text, None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?", text)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is not None and not (port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"{value!r} has a bad port")
    host = host.rstrip(".")
    try:
        host = str(ipaddress.ip_network(host, strict=False))
    except ValueError:
        if not _HOST_RE.match(host) and not (host.startswith("*.") and _HOST_RE.match(host[2:])):
            raise ValueError(f"{value!r} is not a CIDR, address or host name") from None
    return f"{host}:{port}" if port else host


_STORE_SCHEMES = ("sqlite", "postgresql", "postgres")
_PG_PART = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")


def _store_url(value: Any) -> StoreURL:
    """`sqlite:///ABS/PATH`, `postgresql://USER@HOST[:PORT]/DATABASE` (no password, no query), or
    empty for the state directory's SQLite file."""
    import urllib.parse

    text = _string(value).strip()
    if not text:
        return StoreURL()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _STORE_SCHEMES:
        raise ValueError("expected sqlite:///ABSOLUTE/PATH or postgresql://USER@HOST:PORT/DATABASE"
                         f" (unknown scheme {scheme + ':' if sep else 'missing'})")
    if "?" in rest or "#" in rest:
        raise ValueError("takes no query parameters or fragment: use store.tls, store.ca_file "
                         "and store.password_file")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest.startswith("//"):
            raise ValueError("a sqlite URL names an absolute path: sqlite:///var/lib/x/store.db")
        return StoreURL(path=Path(urllib.parse.unquote(rest)))
    netloc, _, database = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if ":" in userinfo:
        raise ValueError("a password in the URL is refused: put it in store.password_file (or "
                         "the systemd credential store-password)")
    if not at or not userinfo:
        raise ValueError("names no user: postgresql://USER@HOST:PORT/DATABASE")
    if not database or "/" in database or not _PG_PART.fullmatch(database):
        raise ValueError("names no database: postgresql://USER@HOST:PORT/DATABASE")
    if not _PG_PART.fullmatch(userinfo):
        raise ValueError("has a user name with characters that need %-encoding")
    try:
        parts = urllib.parse.urlsplit(f"//{hostport}")
        host, port = parts.hostname or "", parts.port or 5432
    except ValueError as exc:
        raise ValueError(f"has a bad host or port ({exc})") from None
    if not host or not (_HOST_RE.match(host) or _is_ip(host)):
        raise ValueError("names no usable host: postgresql://USER@HOST:PORT/DATABASE (a Unix "
                         "socket is not allowed: connections go through the egress dialer)")
    return StoreURL(scheme="postgresql", host=host, port=port,
                    user=urllib.parse.unquote(userinfo), database=urllib.parse.unquote(database))



def parse_store_url(text: str) -> StoreURL:
    """A store URL given outside the settings (`store migrate --to`), by the same rules as
    `[store] url`; `ValueError` says what is wrong (never quoting the URL: it may hold a
    password)."""
    return _store_url(text)

def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


SINK_KINDS = ("journal", "syslog", "file")


def _sink(value: Any) -> SinkSpec:
    """`journal`, `syslog`, `syslog:/path/to/socket`, `file:/abs/path.jsonl`, or an inline table
    `{ sink = "…", required = false }` (sinks are required unless they say otherwise)."""
    required = True
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"sink", "required"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (a sink table has sink and required)")
        if "sink" not in value:
            raise ValueError("a sink table needs sink = \"journal\" | \"syslog\" | \"file:PATH\"")
        if "required" in value:
            required = _bool(value["required"])
        value = value["sink"]
    text = _string(value).strip()
    kind, _, target = text.partition(":")
    if kind not in SINK_KINDS:
        raise ValueError(f"unknown sink {text!r}: expected journal, syslog, syslog:SOCKET or "
                         "file:/ABSOLUTE/PATH")
    if kind == "journal" and target:
        raise ValueError("the journal sink takes no path (it writes to systemd-journald)")
    if kind == "file" and not target:
        raise ValueError("a file sink needs a path: file:/var/log/appliance/audit.jsonl")
    if target:
        if "\x00" in target or not target.startswith("/"):
            raise ValueError(f"{kind} sink path must be absolute: {target!r}")
        if any(part == ".." for part in target.split("/")):
            raise ValueError(f"{kind} sink path may not contain '..': {target!r}")
    return SinkSpec(kind, target, required)


class _SinkList(_ListOf):
    """`[audit] sinks`: a list of `_sink`, each named once."""

    def __call__(self, value: Any) -> tuple[Any, ...]:
        sinks = super().__call__(value)
        names = [sink.name for sink in sinks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"sink {name!r} is listed twice")
        return sinks


def _role(value: Any) -> str:
    return _choice(*ROLES)(value)


def _secret(value: Any) -> Secret[str] | None:
    text = _string(value)
    return Secret(text) if text else None


def _type_name(value: Any) -> str:
    return {dict: "a table", list: "a list", bool: "a boolean", int: "an integer",
            float: "a number", str: "a string"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class _Key:
    parse: Callable[[Any], Any]
    default: Any
    dev_default: Any = None
    doc: str = ""


SCHEMA: dict[str, dict[str, _Key]] = {
    "server": {
        "listen": _Key(_endpoint, "0.0.0.0:443", "localhost:8443",
                       "HTTPS listener, HOST:PORT."),
        "http_listen": _Key(_optional_endpoint, "", None,
                            "Plain-HTTP listener (redirects to HTTPS only); empty for none."),
        "state_dir": _Key(_path, str(DEFAULT_STATE_DIR), str(DEV_STATE_DIR),
                          "Directory for the store, the instance secret and TLS material."),
        "trusted_proxies": _Key(_ListOf(_cidr), [], None,
                                "Reverse proxies (CIDRs) whose X-Forwarded-For names the client."),
        "max_body_bytes": _Key(_integer(1024, 64 * 1024 * 1024), 1024 * 1024, None,
                               "Largest request body accepted (413 above)."),
        "request_timeout": _Key(_number(1, 3600), 60, None,
                                "Seconds a request may take before it is answered with 504."),
        "shutdown_timeout": _Key(_number(0, 600), 20, None,
                                 "Seconds in-flight requests get to finish on SIGTERM."),
        # Listener limits (docs/configuration.md says why these defaults).
        "handshake_timeout": _Key(_number(1, 300), 10, None,
                                  "Seconds a client gets to finish the TLS handshake."),
        "first_byte_timeout": _Key(_number(1, 300), 10, None,
                                   "Seconds from the handshake to the first request byte."),
        "request_head_timeout": _Key(_number(1, 300), 10, None,
                                     "Seconds from the first byte to the end of the request head."),
        "keepalive_timeout": _Key(_number(1, 300), 30, None,
                                  "Seconds an idle kept-alive connection stays open."),
        "max_connections": _Key(_integer(1, 1_000_000), 2000, None,
                                "Client connections open at once; more are closed at accept."),
        "max_connections_per_address": _Key(_integer(1, 1_000_000), 100, None,
                                            "Client connections open at once from one address "
                                            "(IPv6: one /64)."),
        "heartbeat_interval": _Key(_number(0.2, 3600), 10, None,
                                   "Seconds between this instance's heartbeats in the store "
                                   "(doctor and GET /api/v1/instances read them)."),
    },
    "tls": {
        "mode": _Key(_choice("local", "files", "acme"), "local", "local",
                     "local (a local CA in the state dir), files, or acme."),
        "names": _Key(_ListOf(_tls_name), ["localhost", "127.0.0.1", "::1"], None,
                      "Names (and addresses) the certificate covers."),
        "email": _Key(_email, "", None, "ACME account contact."),
        "directory": _Key(_directory, "production", None,
                          "ACME directory URL, or 'production' / 'staging' (Let's Encrypt)."),
        "ca_bundle": _Key(_optional_path, "", None, "PEM bundle to trust a private ACME server."),
        "profile": _Key(_string, "", None, "ACME certificate profile."),
        "eab_kid": _Key(_string, "", None, "External Account Binding key id."),
        "eab_hmac_key": _Key(_secret, "", None, "External Account Binding HMAC key."),
        "cert_file": _Key(_optional_path, "", None, "Certificate chain (PEM), files mode."),
        "key_file": _Key(_optional_path, "", None, "Private key (PEM), files mode."),
        "check_interval": _Key(_number(0.2, 86400), 60, None,
                               "Seconds between checks of the certificate (files re-read, "
                               "local leaf re-issued)."),
        "renew_check_interval": _Key(_number(1, 86400), 600, None,
                                     "Seconds between ACME renewal checks (acme mode)."),
        "order_lease": _Key(_number(2, 3600), 30, None,
                            "Seconds the ACME order lease lasts unrenewed (several instances on "
                            "one store): a holder that dies frees it after this long."),
    },
    "egress": {
        "source_address": _Key(_ListOf(_ip_address), [], None,
                               "Address(es) outbound connections leave from."),
        "mode": _Key(_choice("default", "strict"), "default", None,
                     "default (all not denied) or strict (only what allow lists)."),
        "allow": _Key(_ListOf(_egress_rule), [], None, "CIDRs, host names, host:port allowed."),
        "deny": _Key(_ListOf(_egress_rule), [], None, "CIDRs, host names, host:port denied."),
        "allow_private": _Key(_bool, True, None, "Allow private (RFC 1918, ULA) destinations."),
    },
    "auth": {
        "require_2fa": _Key(_ListOf(_role), ["admin"], None, "Roles that must use TOTP."),
        "session_idle_timeout": _Key(_number(60, 7 * 86400), 1800, None,
                                     "Seconds a session lives without a request."),
        "session_absolute_timeout": _Key(_number(60, 30 * 86400), 43200, None,
                                         "Seconds a session lives at most, used or not."),
    },
    "metrics": {
        "allow": _Key(_ListOf(_cidr), [], None, "Clients (CIDRs) that may read /metrics without "
                      "a token; empty: a token with the metrics scope is needed."),
        "datasource_names": _Key(_bool, False, None, "Label pool metrics by datasource name "
                                 "(default: by datasource id)."),
    },
    "store": {
        "url": _Key(_store_url, "", None, "sqlite:///ABS/PATH or postgresql://USER@HOST:PORT/DB; "
                    "empty: the SQLite file in the state directory."),
        "password_file": _Key(_optional_path, "", None, "File (0600) holding the PostgreSQL "
                              "password; else the systemd credential store-password."),
        "tls": _Key(_choice("verify-full", "require", "disable"), "verify-full", None,
                    "PostgreSQL TLS: verify-full, require (unverified) or disable."),
        "ca_file": _Key(_optional_path, "", None, "PEM bundle to verify the PostgreSQL server "
                        "with (default: the system's)."),
    },
    "audit": {
        "keep_days": _Key(_integer(0, 36500), 0, None,
                          "Days audit entries are kept (pruned behind a checkpoint once every "
                          "required sink has them); 0 keeps everything."),
        "sinks": _Key(_SinkList(_sink), [], None,
                      "Where every entry is also written as a JSON line: journal, syslog, "
                      "syslog:SOCKET, file:/ABS/PATH, or { sink = ..., required = false }."),
        "anchor_interval": _Key(_number(1, 86400), 60, None,
                                "Seconds between anchors of the chain's head (log and sinks)."),
        "verify_interval": _Key(_number(1, 86400), 60, None,
                                "Seconds between background verifications of new entries."),
    },
    "log": {
        "format": _Key(_choice("json", "text"), "json", "text", "json lines or text, on stderr."),
        "level": _Key(_choice(*LOG_LEVELS), "info", None, "debug, info, warning or error."),
    },
}

# Command-line flags that set a setting: flag destination -> (section, key).
FLAG_KEYS = {
    "listen": ("server", "listen"),
    "http_listen": ("server", "http_listen"),
    "state_dir": ("server", "state_dir"),
    "log_format": ("log", "format"),
    "log_level": ("log", "level"),
}


def load(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    dev: bool = False,
) -> Settings:
    """Build the settings: defaults (dev defaults with `dev`), then TOML, then env, then flags.

    `env` defaults to the process environment (the only place the code base reads it).
    Raises `ConfigError` naming the first bad key.
    """
    if env is None:
        env = os.environ
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
    used_file = config_file
    if used_file is None and not dev and DEFAULT_CONFIG_FILE.exists():
        used_file = DEFAULT_CONFIG_FILE
    if used_file is not None:
        layers.append((str(used_file), _read_toml(used_file)))
    layers.append(("environment", _read_env(env)))
    flag_layer: dict[str, dict[str, Any]] = {}
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in FLAG_KEYS:
            raise ConfigError(f"--{name.replace('_', '-')}", "not a setting flag")
        section, key = FLAG_KEYS[name]
        flag_layer.setdefault(section, {})[key] = value
    layers.append(("flags", flag_layer))

    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, spec in keys.items():
            raw, origin = (spec.dev_default if dev and spec.dev_default is not None
                           else spec.default), "default"
            for layer_name, layer in layers:
                if key in layer.get(section, {}):
                    raw, origin = layer[section][key], layer_name
            try:
                values[section][key] = spec.parse(raw)
            except ValueError as exc:
                where = f"{section}.{key}"
                if origin == "environment":
                    where = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
                elif origin == "flags":
                    flag = next(f for f, sk in FLAG_KEYS.items() if sk == (section, key))
                    where = "--" + flag.replace("_", "-")
                elif origin != "default":
                    where = f"{section}.{key} (in {origin})"
                raise ConfigError(where, str(exc)) from None

    settings = Settings(
        server=ServerSettings(**values["server"]),
        tls=TLSSettings(**values["tls"]),
        egress=EgressSettings(**values["egress"]),
        auth=AuthSettings(**values["auth"]),
        log=LogSettings(**values["log"]),
        metrics=MetricsSettings(**values["metrics"]),
        store=StoreSettings(**values["store"]),
        audit=AuditSettings(**values["audit"]),
        dev=dev,
        config_file=used_file,
        environment=_environment(env),
    )
    _check_consistency(settings)
    return settings


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except PermissionError:
        raise ConfigError(str(path), "config file is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a directory, not a config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not valid UTF-8") from None
    for section, table in data.items():
        if section not in SCHEMA:
            raise ConfigError(section, f"unknown section in {path}")
        if not isinstance(table, dict):
            raise ConfigError(section, f"must be a table ([{section}]) in {path}")
        for key in table:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{section}.{key}", f"unknown setting in {path}")
    return data


def _read_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_NON_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(name, "unknown setting in the environment")
        value: Any = env[name]
        if isinstance(SCHEMA[section][key].parse, _ListOf):
            value = [part.strip() for part in value.split(",") if part.strip()]
        out.setdefault(section, {})[key] = value
    return out


def _environment(env: Mapping[str, str]) -> Environment:
    credentials = env.get("CREDENTIALS_DIRECTORY")
    password = env.get("APPLIANCE_ENCRYPTION_PASSWORD")
    salt = env.get("APPLIANCE_ENCRYPTION_SALT")
    return Environment(
        credentials_directory=Path(credentials) if credentials else None,
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        journal_stream=env.get("JOURNAL_STREAM") or None,
        encryption_password=Secret(password) if password else None,
        encryption_salt=Secret(salt) if salt else None,
    )


def _check_consistency(settings: Settings) -> None:
    tls = settings.tls
    if tls.mode == "files":
        if tls.cert_file is None:
            raise ConfigError("tls.cert_file", "required when tls.mode is 'files'")
        if tls.key_file is None:
            raise ConfigError("tls.key_file", "required when tls.mode is 'files'")
    if tls.mode == "acme":
        if not tls.names:
            raise ConfigError("tls.names", "at least one name is required when tls.mode is 'acme'")
        if bool(tls.eab_kid) != bool(tls.eab_hmac_key):
            raise ConfigError("tls.eab_kid", "eab_kid and eab_hmac_key go together")
    if not tls.names and tls.mode == "local":
        raise ConfigError("tls.names", "at least one name is required when tls.mode is 'local'")
    store = settings.store
    if store.url.scheme == "sqlite" and (store.password_file or store.ca_file
                                         or store.tls != "verify-full"):
        key = "store.password_file" if store.password_file else (
            "store.ca_file" if store.ca_file else "store.tls")
        raise ConfigError(key, "applies to a postgresql:// store.url only")
    if store.ca_file is not None and store.tls != "verify-full":
        raise ConfigError("store.ca_file", "is only used with store.tls = 'verify-full'")
    env = settings.environment
    if bool(env.encryption_password) != bool(env.encryption_salt):
        raise ConfigError(
            "APPLIANCE_ENCRYPTION_PASSWORD",
            "APPLIANCE_ENCRYPTION_PASSWORD and APPLIANCE_ENCRYPTION_SALT must be set together",
        )


def documented_keys() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, doc) for every setting, for docs and `--help` texts."""
    return [
        (section, key, spec.default, spec.doc)
        for section, keys in SCHEMA.items()
        for key, spec in keys.items()
    ]
