"""The registry of datasource kinds: what a kind declares (`Kind`) and the lookup by its name.

Owns the contract between a kind's folder and the rest of the appliance: its config schema and
secret fields, its binding compiler, its engine and its description for the API and the console.
Never imports a kind's engine (a driver loads only when an engine is made) nor anything above it.
"""

from __future__ import annotations

import abc
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from appliance.kinds.schema import Field, SecretField, check_fields, conditions_hold
from appliance.parameters import ParameterSet

if TYPE_CHECKING:
    from appliance.datasources.engine import Engine, Target
    from appliance.egress import Dialer


# The language of a query's body: SQL text, or a JSON value (an object the kind's compiler reads).
BodyLanguage = Literal["sql", "json"]
BODY_LANGUAGES: tuple[BodyLanguage, ...] = ("sql", "json")


class Template(Protocol):
    """A compiled query of any kind: its declared parameters, and the per-run bind (which checks
    the values strictly and returns what the kind's engine runs)."""

    @property
    def parameters(self) -> ParameterSet: ...

    def bind(self, params: Any) -> Any: ...


class Kind(abc.ABC):
    """One datasource kind. Subclasses declare the class attributes, implement `compile` and
    `make_engine`, and are registered with `@register`; nobody else asks "which kind?"."""

    name: ClassVar[str]  # as stored in `datasources.kind` and sent by the API
    title: ClassVar[str]  # as the console shows it
    fields: ClassVar[tuple[Field, ...]]  # the config keys it takes (limits are common)
    secrets: ClassVar[tuple[SecretField, ...]] = ()
    # Where a datasource of this kind points, as its list shows it: a format over its config
    # keys, e.g. "{host}:{port}/{database}" (a key without a value shows as nothing).
    where: ClassVar[str]
    body: ClassVar[BodyLanguage]  # what a query's body is: SQL text or a JSON value

    @abc.abstractmethod
    def compile(self, body: Any, parameters: ParameterSet) -> Template:
        """Check a query's body against its declared parameters and compile it (InvalidQuery)."""

    @abc.abstractmethod
    def make_engine(self, target: Target, dialer: Dialer, state_dir: Path | None) -> Engine:
        """The engine for one datasource, its driver imported here and only here. `state_dir`:
        the appliance's state directory (a file datasource refuses one inside it)."""

    def check_config(self, raw: Mapping[str, Any], state_dir: Path | None) -> dict[str, Any]:
        """The canonical values of this kind's own config keys (InvalidDatasource naming the
        key). Unknown keys and limits are checked by the caller (`datasources.config`)."""
        return check_fields(self.fields, raw, state_dir)

    @property
    def secret_names(self) -> frozenset[str]:
        """Every secret field it takes, whatever its config."""
        return frozenset(secret.name for secret in self.secrets)

    def required_secrets(self, config: Mapping[str, Any]) -> list[str]:
        """The secrets a datasource with this config cannot work without."""
        return [secret.name for secret in self.secrets
                if secret.required and conditions_hold(secret.when, config)]

    def describe(self) -> dict[str, Any]:
        """This kind as data, for the console's forms and the API (no secret value: names)."""
        return {"name": self.name, "title": self.title, "where": self.where, "body": self.body,
                "fields": [field.describe() for field in self.fields],
                "secrets": [secret.describe() for secret in self.secrets]}


_KINDS: dict[str, Kind] = {}
K = TypeVar("K", bound=type[Kind])


def register(cls: K) -> K:
    """Class decorator: make a kind known by its name (one instance; kinds hold no state).
    A declaration the API and the console could not use is refused here (ValueError)."""
    if cls.name in _KINDS:
        raise ValueError(f"datasource kind {cls.name!r} is registered twice")
    check_declaration(cls)
    _KINDS[cls.name] = cls()
    return cls


def check_declaration(cls: type[Kind]) -> None:
    """A kind's `body` is a known language and its `where` names only its own config keys, as
    plain `{key}` (no conversion, no format spec: the console substitutes them as text)."""
    if getattr(cls, "body", None) not in BODY_LANGUAGES:
        raise ValueError(f"datasource kind {cls.name!r}: body must be one of "
                         f"{', '.join(BODY_LANGUAGES)}")
    where = getattr(cls, "where", None)
    if not isinstance(where, str) or not where:
        raise ValueError(f"datasource kind {cls.name!r}: where must name its config keys, "
                         "e.g. \"{host}:{port}\"")
    keys = {field.name for field in cls.fields}
    try:
        parts = list(string.Formatter().parse(where))
    except ValueError as exc:
        raise ValueError(f"datasource kind {cls.name!r}: where {where!r}: {exc}") from None
    for _, key, spec, conversion in parts:
        if key is None:
            continue
        if key not in keys or spec or conversion:
            raise ValueError(f"datasource kind {cls.name!r}: where {where!r}: {{{key}}} is not "
                             f"one of its config keys ({', '.join(sorted(keys))})")


def kind_named(name: Any) -> Kind | None:
    """The registered kind called `name`, or None."""
    return _KINDS.get(name) if isinstance(name, str) else None


def all_kinds() -> tuple[Kind, ...]:
    """Every registered kind, in the order they were registered."""
    return tuple(_KINDS.values())
