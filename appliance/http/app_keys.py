"""Typed keys for what the application and its requests carry (`app[CORE]`, `request[…]`).

Owns the names only: the services themselves are the core's (`appliance.core`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from appliance.core import Core
from appliance.settings import Settings

SETTINGS = web.AppKey("settings", Settings)  # known when the app is built, before the core opens
CORE = web.AppKey("core", Core)  # every service, while the application runs
# Typed request storage where aiohttp has it (RequestKey), a plain string key (the same at run
# time) before; the type checker reads the typed branch.
if TYPE_CHECKING or hasattr(web, "RequestKey"):
    REQUEST_ID = web.RequestKey("request_id", str)
else:
    REQUEST_ID = "request_id"
