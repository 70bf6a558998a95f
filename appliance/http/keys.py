"""Typed keys for what the application carries (`app[SETTINGS]`, …).

Owns the names only.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.audit import AuditLog
from appliance.auth import AuthService
from appliance.datasources import DatasourceService
from appliance.egress import Dialer
from appliance.egress.runtime import RuntimeEgress
from appliance.keyring import SecretVault
from appliance.queries import QueryService, Runner
from appliance.settings import Settings
from appliance.store import Store
from appliance.tls import TLSManager

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
TLS = web.AppKey("tls", TLSManager)
AUDIT = web.AppKey("audit", AuditLog)
AUTH = web.AppKey("auth", AuthService)
KEYRING = web.AppKey("keyring", SecretVault)
EGRESS = web.AppKey("egress", Dialer)  # the one dialer of the process
EGRESS_RUNTIME = web.AppKey("egress_runtime", RuntimeEgress)
DATASOURCES = web.AppKey("datasources", DatasourceService)
QUERIES = web.AppKey("queries", QueryService)
RUNNER = web.AppKey("runner", Runner)
# Typed request storage where aiohttp has it (3.13+), a plain key before.
_RequestKey: Any = getattr(web, "RequestKey", None)
REQUEST_ID: Any = _RequestKey("request_id", str) if _RequestKey else "request_id"
