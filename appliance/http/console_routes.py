"""Routes for the web console: its static shell at `/` and its assets under `/console/` (the files
are package data of `appliance.console`).

Owns the asset table (read once from package data), the console's Content-Security-Policy and the
route declarations (public: the shell holds no data; every API call it makes enforces its role).
Never serves a file outside the package's `static` directory and never renders data on the server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

from appliance.http import access

# The console's pages: scripts and styles only from this origin, no inline script, no eval,
# images from this origin or data: (the 2FA QR code), API calls to this origin only.
CONSOLE_CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                      "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                      "base-uri 'none'; frame-ancestors 'none'")
_TYPES: Final = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file under `static/`, keyed by its path relative to it (e.g. `pages/login.js`)."""
    root = resources.files("appliance.console").joinpath("static")
    found: dict[str, Asset] = {}

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if suffix not in _TYPES:
                continue
            body = child.read_bytes()
            found[name] = Asset(body, _TYPES[suffix],
                                '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    walk(root, "")
    if "index.html" not in found:
        raise RuntimeError("the console's index.html is missing from the package data")
    return found


def _respond(request: web.Request, asset: Asset, *, page: bool) -> web.Response:
    headers = {"Cache-Control": "no-cache", "ETag": asset.etag}
    if page:
        headers["Content-Security-Policy"] = CONSOLE_CSP
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                        headers=headers)


class Console:
    """The handlers, bound to the asset table loaded at construction."""

    def __init__(self) -> None:
        self.assets = load_assets()

    @access.public
    async def index(self, request: web.Request) -> web.Response:
        return _respond(request, self.assets["index.html"], page=True)

    @access.public
    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self.assets.get(name)  # a lookup in a fixed table: no path ever reaches a file
        if found is None or name == "index.html":
            raise web.HTTPNotFound()
        return _respond(request, found, page=False)


def add_routes(app: web.Application) -> None:
    console = Console()
    app.router.add_get("/", console.index)
    app.router.add_get("/console/{name:[A-Za-z0-9_./-]+}", console.asset)
