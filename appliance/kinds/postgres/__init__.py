"""The PostgreSQL kind: its config (`config`), SQL with `{{ name }}` bindings compiled by the
shared SQL compiler (`kinds.sql.binding`, postgres dialect), its engine and pool.

Owns the registered `Postgres` kind. Never imports asyncpg here: only `make_engine` loads the
engine module (and the driver), so start time and idle memory do not pay for an unused kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.kinds.postgres import config
from appliance.kinds.registry import Kind, register
from appliance.parameters import ParameterSet

if TYPE_CHECKING:
    from appliance.datasources.engine import Engine, Target
    from appliance.egress import Dialer
    from appliance.kinds.sql.binding import SqlTemplate


@register
class Postgres(Kind):
    name = "postgres"
    title = "PostgreSQL"
    fields = config.FIELDS
    secrets = config.SECRETS
    where = "{host}:{port}/{database}"
    body = "sql"

    def compile(self, body: Any, parameters: ParameterSet) -> SqlTemplate:
        from appliance.kinds.sql.binding import compile_sql  # lazy: at its first compile

        return compile_sql(body, "postgres", parameters)

    def make_engine(self, target: Target, dialer: Dialer, state_dir: Path | None) -> Engine:
        from appliance.kinds.postgres.engine import PostgresEngine

        return PostgresEngine(target, dialer)
