"""Datasources: their records, sealed secrets and engines (one per datasource), the public face.

The query service uses `DatasourceService.engine(id)` and the `Engine` interface only; each kind's
config, compiler and engine live in `appliance/kinds/`, asked by name. Nothing here imports the
HTTP layer; engines connect only through the egress dialer.
"""

import logging

from appliance.datasources.config import InvalidDatasource, Limits
from appliance.datasources.engine import Engine, RowStream, Target
from appliance.datasources.errors import (
    DatasourceAuthFailed,
    DatasourceNotFound,
    DatasourceProtocolError,
    DatasourceTimeout,
    DatasourceTLSError,
    DatasourceUnreachable,
    QueryFailed,
    ResponseTooLarge,
)
from appliance.datasources.service import DatasourceService, make_engine

# Driver DEBUG logs quote statements with their values (aiosqlite) and commands with their documents
# (PyMongo): capped at INFO for the whole process, so no parameter value or row reaches a log line.
for _driver in ("aiosqlite", "pymongo"):
    logging.getLogger(_driver).setLevel(logging.INFO)

__all__ = [
    "DatasourceAuthFailed",
    "DatasourceNotFound",
    "DatasourceProtocolError",
    "DatasourceService",
    "DatasourceTLSError",
    "DatasourceTimeout",
    "DatasourceUnreachable",
    "Engine",
    "InvalidDatasource",
    "Limits",
    "QueryFailed",
    "ResponseTooLarge",
    "RowStream",
    "Target",
    "make_engine",
]
