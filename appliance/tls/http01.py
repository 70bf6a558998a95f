"""The HTTP-01 responder: key authorizations for pending challenges, held in memory only.

Owns the token table shared by the issuing worker thread and the plain-HTTP listener. Never
writes a token to disk and never answers a token it was not given.
"""

from __future__ import annotations

import re
import threading

from aiohttp import web

PATH_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


class HTTP01Responder:
    """Thread-safe table token -> key authorization; `handle` answers the CA's request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[str, str] = {}
        self.served = 0

    def add(self, token: str, key_authorization: str) -> None:
        if not _TOKEN.fullmatch(token):
            raise ValueError("an ACME token is base64url")
        with self._lock:
            self._table[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._table.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._table.get(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /.well-known/acme-challenge/{token}`: the key authorization, or 404."""
        token = request.match_info.get("token", "")
        found = self.get(token) if _TOKEN.fullmatch(token) else None
        if found is None:
            raise web.HTTPNotFound(text="no such ACME challenge\n")
        self.served += 1
        return web.Response(text=found, content_type="application/octet-stream")
