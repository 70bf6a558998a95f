"""The HTTP-01 responder: key authorizations for pending challenges, in memory and, when shared,
in the store, so whichever instance the CA reaches behind a load balancer can answer.

Owns the token table shared by the issuing worker thread and the plain-HTTP listener, and the
bridge from that thread to the store. Never writes a token to disk itself, never touches the
store for a token of the wrong shape, and never answers a token it was not given.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # aiohttp only where a request is answered: `doctor` imports this module too
    from aiohttp import web

PATH_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# How long a published answer stays valid: longer than any order (acme_client.ORDER_DEADLINE).
ANSWER_LIFETIME = 600.0
# How long the issuing thread waits for the store to take or drop an answer.
STORE_TIMEOUT = 30.0


class ChallengeBoard(Protocol):
    """Where answers are shared between instances (`storage.ACMEStorage`)."""

    async def put_challenge(self, token: str, key_authorization: str,
                            expires_at: float) -> None: ...

    async def delete_challenge(self, token: str) -> None: ...

    async def challenge(self, token: str) -> str | None: ...


class HTTP01Responder:
    """Thread-safe table token -> key authorization; `handle` answers the CA's request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[str, str] = {}
        self._board: ChallengeBoard | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.served = 0
        self.served_from_store = 0

    def share(self, board: ChallengeBoard, loop: asyncio.AbstractEventLoop) -> None:
        """From now on publish every answer on `board` (the event loop `loop` runs its
        coroutines) and answer tokens found there."""
        self._board, self._loop = board, loop

    def add(self, token: str, key_authorization: str) -> None:
        """Hold an answer (in the issuing worker thread); when shared, it is in the store when
        this returns, before the CA is told to validate. A store failure raises."""
        if not _TOKEN.fullmatch(token):
            raise ValueError("an ACME token is base64url")
        with self._lock:
            self._table[token] = key_authorization
        if self._board is not None and self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(
                self._board.put_challenge(token, key_authorization,
                                          time.time() + ANSWER_LIFETIME), self._loop)
            future.result(STORE_TIMEOUT)

    def remove(self, token: str) -> None:
        """Drop an answer (in the issuing worker thread); a store failure leaves the shared row
        to expire."""
        with self._lock:
            self._table.pop(token, None)
        if self._board is not None and self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._board.delete_challenge(token),
                                                      self._loop)
            try:
                future.result(STORE_TIMEOUT)
            except Exception:  # any failure: the row expires by itself (ANSWER_LIFETIME)
                future.cancel()

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._table.get(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    async def lookup(self, token: str) -> str | None:
        """This instance's own answer, else (shared) another's from the store; None for a
        token of the wrong shape without asking the store."""
        if not _TOKEN.fullmatch(token):
            return None
        found = self.get(token)
        if found is None and self._board is not None:
            found = await self._board.challenge(token)
            if found is not None:
                self.served_from_store += 1
        return found

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /.well-known/acme-challenge/{token}`: the key authorization, or 404."""
        from aiohttp import web  # lazy: loaded already in a serving process (see the top)

        found = await self.lookup(request.match_info.get("token", ""))
        if found is None:
            raise web.HTTPNotFound(text="no such ACME challenge\n")
        self.served += 1
        return web.Response(text=found, content_type="application/octet-stream")
