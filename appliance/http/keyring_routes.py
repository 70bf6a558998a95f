"""The key status API: `GET /api/v1/keys` (data key versions, the active one, fields each seals).

Admin only. Never returns key material; rotation and password change stay CLI verbs.
"""

from __future__ import annotations

from aiohttp import web

from appliance.http import access
from appliance.http.app_keys import CORE
from appliance.keyring.rotation import status
from appliance.timestamps import rfc3339


@access.admin
async def get_keys(request: web.Request) -> web.Response:
    """Data key versions, which is active, and how many sealed fields each holds."""
    keys = await status(request.app[CORE].vault)
    return web.json_response({
        "keys": [
            {
                "version": key.version,
                "active": key.active,
                "created_at": rfc3339(key.created_at) if key.created_at else None,
                "fields": key.fields,
            }
            for key in keys
        ]
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/keys", get_keys)
