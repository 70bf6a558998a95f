"""The instances API: `GET /api/v1/instances`, the appliance processes sharing this store, from
their heartbeats (`appliance.instances`), with this one marked.

Admin only. A thin handler: never writes, and returns no secret (an instance id grants nothing).
"""

from __future__ import annotations

import time

from aiohttp import web

from appliance.http import access
from appliance.http.app_keys import CORE
from appliance.instances import ALIVE_BEATS, ALIVE_SLACK, list_instances
from appliance.timestamps import rfc3339


@access.admin
async def get_instances(request: web.Request) -> web.Response:
    """The instances sharing this store: version, host, address, last seen, alive or not."""
    core = request.app[CORE]
    this = core.heartbeat.id
    now = time.time()
    return web.json_response({
        "this": this,
        "alive_rule": f"last seen within {ALIVE_BEATS} of its heartbeat intervals "
                      f"plus {ALIVE_SLACK:g} s",
        "instances": [
            {
                "id": instance.id,
                "this": instance.id == this,
                "alive": instance.alive(now),
                "version": instance.version,
                "schema_version": instance.schema_version,
                "hostname": instance.hostname,
                "address": instance.address,
                "http_address": instance.http_address,
                "pid": instance.pid,
                "heartbeat_interval_s": instance.beat_interval,
                "started_at": rfc3339(instance.started_at),
                "last_seen": rfc3339(instance.last_seen),
                "seen_seconds_ago": round(instance.seen_ago(now), 1),
            }
            for instance in await list_instances(core.store)
        ],
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/instances", get_instances)
