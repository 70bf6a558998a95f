"""Datasources and their engines (PostgreSQL, SQLite, MongoDB, REST): the public face.

The query service uses `DatasourceService.engine(id)` and the `Engine` interface only. Nothing
here imports the HTTP layer; engines connect only through the egress dialer.
"""

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
