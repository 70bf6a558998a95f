"""The SQLite kind: a database file on the appliance host (`config`), SQL with `{{ name }}`
bindings compiled by the shared SQL compiler (`kinds.sql.binding`, sqlite dialect), its engine.

Owns the registered `SQLite` kind. Never imports aiosqlite here: only `make_engine` loads the
engine module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.kinds.registry import Kind, register
from appliance.kinds.sqlite import config
from appliance.parameters import ParameterSet

if TYPE_CHECKING:
    from appliance.datasources.engine import Engine, Target
    from appliance.egress import Dialer
    from appliance.kinds.sql.binding import SqlTemplate


@register
class SQLite(Kind):
    name = "sqlite"
    title = "SQLite file"
    fields = config.FIELDS
    where = "{path}"
    body = "sql"

    def compile(self, body: Any, parameters: ParameterSet) -> SqlTemplate:
        from appliance.kinds.sql.binding import compile_sql  # lazy: at its first compile

        return compile_sql(body, "sqlite", parameters)

    def make_engine(self, target: Target, dialer: Dialer, state_dir: Path | None) -> Engine:
        """No dialer: a file is not a network connection. `state_dir`: the engine refuses, each
        time it opens its file, one that lies in it."""
        from appliance.kinds.sqlite.engine import SQLiteEngine

        return SQLiteEngine(target, state_dir)
