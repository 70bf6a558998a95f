"""Datasource kinds, one folder each (postgres, mongodb, rest, sqlite, mysql), registered by
name: the public face. Code that needs "the PostgreSQL kind" asks `kind_named`, never an if/elif.

Owns importing every kind so that each registers itself (in this order: the order the API lists
them). Never imports a driver nor a binding compiler: each kind loads its engine only when one is
made, and its compiler at its first compile.
"""

from appliance.kinds.registry import (
    BODY_LANGUAGES,
    Kind,
    Template,
    all_kinds,
    kind_named,
    register,
)
from appliance.kinds.schema import Field, SecretField

# Registration happens on import; the order is the order of `all_kinds()`.
from appliance.kinds import postgres, mongodb, rest, sqlite, mysql  # noqa: F401  isort: skip

__all__ = ["BODY_LANGUAGES", "Field", "Kind", "SecretField", "Template", "all_kinds", "kind_named",
           "register"]
