"""Typed keys for what the application and its requests carry (`app[CORE]`, `request[…]`).

Owns the names only: the services themselves are the core's (`appliance.core`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.core import Core
from appliance.settings import Settings

SETTINGS = web.AppKey("settings", Settings)  # known when the app is built, before the core opens
CORE = web.AppKey("core", Core)  # every service, while the application runs
# Typed request storage where aiohttp has it (3.13+), a plain key before.
_RequestKey: Any = getattr(web, "RequestKey", None)
REQUEST_ID: Any = _RequestKey("request_id", str) if _RequestKey else "request_id"
