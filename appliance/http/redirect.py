"""The plain-HTTP listener: it answers ACME HTTP-01 challenges from memory and redirects
everything else to HTTPS.

Never serves other content over plain HTTP and never reflects a Host header it does not recognise.
"""

from __future__ import annotations

from aiohttp import web

from appliance.http import middleware
from appliance.http.app_keys import SETTINGS
from appliance.settings import Settings
from appliance.tls.http01 import PATH_PREFIX, HTTP01Responder


def build_redirect_app(settings: Settings, https_port: int,
                       http01: HTTP01Responder | None = None) -> web.Application:
    """Every request gets 308 to the same path on HTTPS, for a configured name only; with
    `http01`, GET /.well-known/acme-challenge/{token} is answered from its table."""
    names = settings.tls.names

    async def redirect(request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]").lower().rstrip(".")
        if host not in names:
            host = names[0]
        authority = f"[{host}]" if ":" in host else host
        if https_port != 443:
            authority += f":{https_port}"
        raise web.HTTPPermanentRedirect(f"https://{authority}{request.rel_url.path_qs}")

    app = web.Application(middlewares=[middleware.front()],
                          client_max_size=1024)
    app[SETTINGS] = settings
    if http01 is not None:
        app.router.add_get(PATH_PREFIX + "{token}", http01.handle)
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app
