"""The MongoDB kind: a database on a MongoDB server (`config`), JSON command templates compiled
by `binding`, and its engine (one PyMongo client per datasource).

Owns the registered `MongoDB` kind. Never imports pymongo here: only `make_engine` loads the
engine module (and the driver).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.kinds.mongodb import config
from appliance.kinds.registry import Kind, register
from appliance.parameters import ParameterSet

if TYPE_CHECKING:
    from appliance.datasources.engine import Engine, Target
    from appliance.egress import Dialer
    from appliance.kinds.mongodb.binding import MongoTemplate


@register
class MongoDB(Kind):
    name = "mongodb"
    title = "MongoDB"
    fields = config.FIELDS
    secrets = config.SECRETS
    where = "{host}:{port}/{database}"
    body = "json"

    def compile(self, body: Any, parameters: ParameterSet) -> MongoTemplate:
        from appliance.kinds.mongodb.binding import compile_mongo  # lazy: at its first compile

        return compile_mongo(body, parameters)

    def make_engine(self, target: Target, dialer: Dialer, state_dir: Path | None) -> Engine:
        from appliance.kinds.mongodb.engine import MongoEngine

        return MongoEngine(target, dialer)
