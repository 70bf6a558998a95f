"""A kind's config schema as data: its fields (`Field`), its secret fields (`SecretField`), and the
one checker that turns a raw config into canonical values by them.

Owns the field types, their checks and the words of their errors (`InvalidDatasource`), and the
description of both as JSON (for the console's forms and the API). Never sees a secret value:
secret fields are names. Imports nothing of `appliance.datasources` (which sits above the kinds).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from appliance.errors import Unprocessable

FieldType = Literal["string", "integer", "boolean", "choice", "url", "path"]
# A field's extra check, after its type's: the value (None when absent), the state directory.
Check = Callable[[Any, Path | None], Any]

IDENT_RE: Final = re.compile(r"[^\x00-\x1f\x7f]{1,128}")  # a name, a user: no control characters
HOST_RE: Final = re.compile(r"[A-Za-z0-9._\-:\[\]]{1,253}")  # a host name or an IP address


class InvalidDatasource(Unprocessable):
    """A datasource's name, kind, config or secrets cannot be saved (422, naming the field in the
    message and in `field`: `name`, `kind`, `config`, `config.<key>`, `secrets`, `secrets.<key>`;
    a key only when it is one the kind takes, never one the caller made up)."""

    code = "invalid_datasource"


@dataclass(frozen=True)
class Field:
    """One config key of a kind. `when` (e.g. `{"auth": "basic"}`): the key is taken only when
    the config's other keys hold those values. `destination`: a change of it moves where the
    datasource's secrets are sent (`"origin"`: by the URL's origin only)."""

    name: str
    label: str
    type: FieldType = "string"
    default: Any = None  # None: none (a required field)
    required: bool = False  # as the console marks it; the server requires a field with no default
    choices: tuple[tuple[str, str], ...] = ()  # (value, label), in the order they are offered
    minimum: int | None = None
    maximum: int | None = None
    help: str | None = None
    placeholder: str | None = None
    when: Mapping[str, Any] = field(default_factory=dict)
    destination: bool | Literal["origin"] = False
    pattern: re.Pattern[str] = IDENT_RE  # for strings
    check: Check | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "label": self.label, "type": self.type}
        if self.default is not None:
            out["default"] = self.default
        if self.required:
            out["required"] = True
        if self.choices:
            out["choices"] = [{"value": value, "label": label} for value, label in self.choices]
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        for key in ("help", "placeholder"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.when:
            out["when"] = dict(self.when)
        if self.destination:
            out["destination"] = self.destination
        return out


@dataclass(frozen=True)
class SecretField:
    """A write-only secret a kind takes; `when` as for a Field. `required`: needed whenever its
    `when` holds (a REST auth mode's credential)."""

    name: str
    label: str
    when: Mapping[str, Any] = field(default_factory=dict)
    required: bool = False

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "label": self.label}
        if self.when:
            out["when"] = dict(self.when)
        if self.required:
            out["required"] = True
        return out


def conditions_hold(when: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    return all(config.get(key) == value for key, value in when.items())


def check_fields(fields: tuple[Field, ...], raw: Mapping[str, Any],
                 state_dir: Path | None) -> dict[str, Any]:
    """The canonical value of each field whose `when` holds, in declaration order (the first
    bad one raises InvalidDatasource, its field `config.<name>`)."""
    out: dict[str, Any] = {}
    for spec in fields:
        if not conditions_hold(spec.when, out):
            continue
        if spec.name not in raw and spec.default is not None:
            out[spec.name] = spec.default
            continue
        value = _typed(spec, raw.get(spec.name))
        out[spec.name] = spec.check(value, state_dir) if spec.check is not None else value
    return out


def _typed(spec: Field, value: Any) -> Any:
    key = f"config.{spec.name}"
    if spec.type == "string":
        if not isinstance(value, str) or not spec.pattern.fullmatch(value):
            raise InvalidDatasource(f"{key} must be a non-empty string without control "
                                    f"characters", field=key)
    elif spec.type == "integer":
        low = spec.minimum if spec.minimum is not None else 0
        high = spec.maximum if spec.maximum is not None else 2**31 - 1
        if type(value) is not int or not low <= value <= high:
            raise InvalidDatasource(f"{key} must be an integer from {low} to {high}", field=key)
    elif spec.type == "boolean":
        if type(value) is not bool:
            raise InvalidDatasource(f"{key} must be true or false", field=key)
    elif spec.type == "choice":
        values = [choice for choice, _ in spec.choices]
        if value not in values:
            raise InvalidDatasource(f"{key} must be one of {', '.join(values)}", field=key)
    return value
