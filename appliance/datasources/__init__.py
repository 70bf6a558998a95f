"""Datasources and their engines (PostgreSQL, SQLite, MongoDB, REST): the public face.

The query service uses `DatasourceService.engine(id)` and the `Engine` interface only. Nothing
here imports the HTTP layer; engines connect only through the egress dialer.
"""

import logging

from appliance.datasources.config import KINDS, SECRET_FIELDS, InvalidDatasource, Limits
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
    "KINDS",
    "SECRET_FIELDS",
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
