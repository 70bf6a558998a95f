"""Datasource configuration: what each kind takes, its secret fields and limits, checked on save.

Owns validation and the canonical shape of a datasource's `config`. Never holds a secret value:
secrets are named here (which fields a kind takes) and sealed by the keyring elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from yarl import URL

from appliance.errors import Unprocessable

KINDS: Final = ("postgres", "mongodb", "rest", "sqlite")
SECRET_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "postgres": frozenset({"password"}),
    "mongodb": frozenset({"password"}),
    "rest": frozenset({"token", "password", "api_key"}),
    "sqlite": frozenset(),
}
REST_AUTH: Final = ("none", "bearer", "basic", "header")
PG_TLS: Final = ("disable", "require", "verify-full")
MONGO_TLS: Final = ("disable", "verify-full")
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9._\-:\[\]]{1,253}")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]{1,64}")
_IDENT_RE: Final = re.compile(r"[^\x00-\x1f\x7f]{1,128}")

# Limits: defaults and the largest values an admin may set.
LIMIT_DEFAULTS: Final = {"max_connections": 5, "statement_timeout_ms": 30_000,
                         "max_rows": 10_000, "max_response_bytes": 16 * 1024 * 1024}
LIMIT_MAXIMA: Final = {"max_connections": 100, "statement_timeout_ms": 3_600_000,
                       "max_rows": 10_000_000, "max_response_bytes": 1024 * 1024 * 1024}
CONNECT_TIMEOUT: Final = 10.0
_BASE_URL: Final = "config.base_url"
_PATH: Final = "config.path"


class InvalidDatasource(Unprocessable):
    """A datasource's name, kind, config or secrets cannot be saved (422, naming the field in the
    message and in `field`: `name`, `kind`, `config`, `config.<key>`, `secrets`, `secrets.<key>`;
    a key only when it is one the kind takes, never one the caller made up)."""

    code = "invalid_datasource"


@dataclass(frozen=True)
class Limits:
    max_connections: int
    statement_timeout_ms: int
    max_rows: int
    max_response_bytes: int


def _limits(raw: Mapping[str, Any]) -> dict[str, int]:
    out = {}
    for key, default in LIMIT_DEFAULTS.items():
        value = raw.get(key, default)
        if type(value) is not int or not 1 <= value <= LIMIT_MAXIMA[key]:
            raise InvalidDatasource(
                f"config.{key} must be an integer from 1 to {LIMIT_MAXIMA[key]}",
                field=f"config.{key}")
        out[key] = value
    return out


def limits_of(config: Mapping[str, Any]) -> Limits:
    return Limits(**{key: int(config.get(key, LIMIT_DEFAULTS[key])) for key in LIMIT_DEFAULTS})


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidDatasource("'name' must be 1 to 100 characters: letters, digits, space, "
                                "'_', '.', '-', starting with a letter or digit", field="name")
    return name


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise InvalidDatasource(f"'kind' must be one of {', '.join(KINDS)}", field="kind")
    return str(kind)


def _string(raw: Mapping[str, Any], key: str, *, default: str | None = None,
            pattern: re.Pattern[str] = _IDENT_RE) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidDatasource(f"config.{key} must be a non-empty string without control "
                                f"characters", field=f"config.{key}")
    return value


def _choice(raw: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise InvalidDatasource(f"config.{key} must be one of {', '.join(choices)}",
                                field=f"config.{key}")
    return str(value)


def _port(raw: Mapping[str, Any], default: int) -> int:
    value = raw.get("port", default)
    if type(value) is not int or not 0 < value < 65536:
        raise InvalidDatasource("config.port must be an integer from 1 to 65535",
                                field="config.port")
    return value


def _boolean(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if type(value) is not bool:
        raise InvalidDatasource(f"config.{key} must be true or false", field=f"config.{key}")
    return value


def check_config(kind: str, raw: Any, *, state_dir: Path | None = None) -> dict[str, Any]:
    """The canonical config for `kind`, or InvalidDatasource naming the key. Unknown keys are
    refused (a misspelt limit would otherwise be silently ignored)."""
    if not isinstance(raw, dict):
        raise InvalidDatasource("'config' must be an object", field="config")
    allowed = set(LIMIT_DEFAULTS)
    out: dict[str, Any]
    if kind in ("postgres", "mongodb"):
        allowed |= {"host", "port", "database", "user", "tls"}
        out = {
            "host": _string(raw, "host", pattern=_HOST_RE),
            "port": _port(raw, 5432 if kind == "postgres" else 27017),
            "database": _string(raw, "database"),
            "user": _string(raw, "user") if kind == "postgres" or "user" in raw else "",
            "tls": _choice(raw, "tls", PG_TLS if kind == "postgres" else MONGO_TLS,
                           "verify-full"),
        }
        # Weaker password methods, answered without verified TLS only when allowed.
        weaker = "allow_md5" if kind == "postgres" else "allow_scram_sha1"
        allowed.add(weaker)
        out[weaker] = _boolean(raw, weaker, False)
    elif kind == "rest":
        allowed |= {"base_url", "auth", "username", "header_name", "follow_redirects",
                    "max_redirects"}
        out = {"base_url": _base_url(raw.get("base_url")),
               "auth": _choice(raw, "auth", REST_AUTH, "none"),
               "follow_redirects": _boolean(raw, "follow_redirects", False)}
        redirects = raw.get("max_redirects", 5)
        if type(redirects) is not int or not 0 <= redirects <= 20:
            raise InvalidDatasource("config.max_redirects must be an integer from 0 to 20",
                                    field="config.max_redirects")
        out["max_redirects"] = redirects
        if out["auth"] == "basic":
            out["username"] = _string(raw, "username")
        if out["auth"] == "header":
            out["header_name"] = _string(raw, "header_name", pattern=_TOKEN_RE)
            if out["header_name"].lower() in ("host", "content-length", "transfer-encoding",
                                              "connection", "cookie"):
                raise InvalidDatasource("config.header_name cannot be a framing header",
                                        field="config.header_name")
    elif kind == "sqlite":
        allowed |= {"path", "read_only"}
        out = {"path": _sqlite_path(raw.get("path"), state_dir),
               "read_only": _boolean(raw, "read_only", True)}
    else:  # pragma: no cover - kinds are checked first
        raise InvalidDatasource("unknown kind")
    unknown = sorted(k for k in raw if k not in allowed)
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in unknown[:5])
        raise InvalidDatasource(f"config has unknown key(s) {shown}; allowed: "
                                f"{', '.join(sorted(allowed))}", field="config")
    out.update(_limits(raw))
    return out


def _base_url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidDatasource("config.base_url must be an http(s) URL", field=_BASE_URL)
    try:
        url = URL(value)
    except ValueError:
        raise InvalidDatasource("config.base_url must be an http(s) URL", field=_BASE_URL) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidDatasource("config.base_url must be an absolute http or https URL",
                                field=_BASE_URL)
    if url.user is not None or url.password is not None:
        raise InvalidDatasource("config.base_url cannot hold credentials: use 'auth' and secrets",
                                field=_BASE_URL)
    if url.query_string or url.fragment:
        raise InvalidDatasource("config.base_url cannot have a query or a fragment",
                                field=_BASE_URL)
    return str(url).rstrip("/")


def in_state_dir(resolved: Path, state: Path) -> bool:
    """Whether `resolved` (a path with every symlink resolved) is the state directory `state`
    (resolved too) or inside it, other than under `demo/` (the demo database of `serve --dev`).
    Checked when a SQLite datasource is saved and each time the engine opens its file."""
    demo = state / "demo"
    return (resolved == state or state in resolved.parents) and demo not in resolved.parents


def _sqlite_path(value: Any, state_dir: Path | None) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 4096:
        raise InvalidDatasource("config.path must be an absolute file path", field=_PATH)
    path = Path(value)
    if not path.is_absolute():
        raise InvalidDatasource("config.path must be an absolute file path", field=_PATH)
    if path.is_symlink():
        raise InvalidDatasource("config.path cannot be a symbolic link: give the file it "
                                "points to", field=_PATH)
    if state_dir is not None and in_state_dir(path.resolve(), state_dir.resolve()):
        raise InvalidDatasource("config.path cannot be inside the appliance's state "
                                "directory (it holds the credential store)", field=_PATH)
    return str(path)


def check_secrets(kind: str, config: Mapping[str, Any], raw: Any, *, partial: bool
                  ) -> dict[str, str | None]:
    """Secret values to set (str) or clear (None). `partial`: a PATCH (null clears)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidDatasource("'secrets' must be an object", field="secrets")
    allowed = SECRET_FIELDS[kind]
    out: dict[str, str | None] = {}
    for key, value in raw.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise InvalidDatasource(f"{kind} datasources take these secrets: {names}",
                                    field="secrets")
        if value is None and partial:
            out[key] = None
            continue
        if not isinstance(value, str) or not value or len(value) > 8192:
            raise InvalidDatasource(f"secrets.{key} must be a non-empty string of at most "
                                    f"8192 characters", field=f"secrets.{key}")
        if any(c in value for c in "\r\n\x00"):
            raise InvalidDatasource(f"secrets.{key} cannot contain CR, LF or NUL",
                                    field=f"secrets.{key}")
        out[key] = value
    return out


def required_secret(kind: str, config: Mapping[str, Any]) -> str | None:
    """The secret a REST datasource's auth mode needs (None when it needs none)."""
    if kind != "rest":
        return None
    return {"bearer": "token", "basic": "password", "header": "api_key"}.get(
        str(config.get("auth")))
