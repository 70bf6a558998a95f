"""Datasource configuration: what every kind shares (name, limits, the shape of secrets), and the
check on save that hands each kind's own keys to its registered `Kind`.

Owns validation and the canonical shape of a datasource's `config`. Never holds a secret value:
secrets are named by each kind and sealed by the keyring elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.kinds.registry import Kind, all_kinds, kind_named
from appliance.kinds.schema import InvalidDatasource

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}")

# Limits: defaults and the largest values an admin may set.
LIMIT_DEFAULTS: Final = {"max_connections": 5, "statement_timeout_ms": 30_000,
                         "max_rows": 10_000, "max_response_bytes": 16 * 1024 * 1024}
LIMIT_MAXIMA: Final = {"max_connections": 100, "statement_timeout_ms": 3_600_000,
                       "max_rows": 10_000_000, "max_response_bytes": 1024 * 1024 * 1024}
CONNECT_TIMEOUT: Final = 10.0

__all__ = ["CONNECT_TIMEOUT", "LIMIT_DEFAULTS", "LIMIT_MAXIMA", "NAME_RE", "InvalidDatasource",
           "Limits", "check_config", "check_kind", "check_name", "check_secrets", "limits_of",
           "required_secret"]


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
    if kind_named(kind) is None:
        names = ", ".join(known.name for known in all_kinds())
        raise InvalidDatasource(f"'kind' must be one of {names}", field="kind")
    return str(kind)


def _kind(kind: str) -> Kind:
    found = kind_named(kind)
    if found is None:  # pragma: no cover - kinds are checked first
        raise InvalidDatasource("unknown kind")
    return found


def check_config(kind: str, raw: Any, *, state_dir: Path | None = None) -> dict[str, Any]:
    """The canonical config for `kind`, or InvalidDatasource naming the key. Unknown keys are
    refused (a misspelt limit would otherwise be silently ignored)."""
    if not isinstance(raw, dict):
        raise InvalidDatasource("'config' must be an object", field="config")
    spec = _kind(kind)
    out = spec.check_config(raw, state_dir)
    allowed = set(LIMIT_DEFAULTS) | {field.name for field in spec.fields}
    unknown = sorted(k for k in raw if k not in allowed)
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in unknown[:5])
        raise InvalidDatasource(f"config has unknown key(s) {shown}; allowed: "
                                f"{', '.join(sorted(allowed))}", field="config")
    out.update(_limits(raw))
    return out


def check_secrets(kind: str, config: Mapping[str, Any], raw: Any, *, partial: bool
                  ) -> dict[str, str | None]:
    """Secret values to set (str) or clear (None). `partial`: a PATCH (null clears)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidDatasource("'secrets' must be an object", field="secrets")
    allowed = _kind(kind).secret_names
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
    """The secret a datasource's config cannot work without (a REST auth mode's credential), or
    None when it needs none."""
    needed = _kind(kind).required_secrets(config)
    return needed[0] if needed else None
