"""The MySQL/MariaDB kind (issue 23): its config (`config`), SQL with `{{ name }}` bindings
compiled to `?` placeholders by the shared SQL compiler with MySQL's dialect table (`binding`),
and its engine (`engine`, over asyncmy's private names in `asyncmy_private`).

Owns the registered `Mysql` kind. Never imports asyncmy here: only `make_engine` loads the engine
module (and the driver), so start time and idle memory do not pay for an unused kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.kinds.mysql import config
from appliance.kinds.registry import Kind, register
from appliance.parameters import ParameterSet

if TYPE_CHECKING:
    from appliance.datasources.engine import Engine, Target
    from appliance.egress import Dialer
    from appliance.kinds.mysql.binding import MysqlTemplate


@register
class Mysql(Kind):
    name = "mysql"
    title = "MySQL / MariaDB"
    fields = config.FIELDS
    secrets = config.SECRETS
    where = "{host}:{port}/{database}"
    body = "sql"

    def compile(self, body: Any, parameters: ParameterSet) -> MysqlTemplate:
        from appliance.kinds.mysql.binding import compile_mysql  # lazy: at its first compile

        return compile_mysql(body, parameters)

    def make_engine(self, target: Target, dialer: Dialer, state_dir: Path | None) -> Engine:
        from appliance.kinds.mysql.engine import MysqlEngine

        return MysqlEngine(target, dialer)
