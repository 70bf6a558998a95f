"""HTTP-01 answers shared through the store: the ordering instance's worker thread publishes an
answer before the CA is told to validate; another instance's plain-HTTP listener (the real
redirect app) answers it; bad, unknown and expired tokens are 404, a malformed one without a
store read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from appliance import settings as settings_module
from appliance.http.redirect import build_redirect_app
from appliance.keyring import SecretVault
from appliance.store import Store
from appliance.tls.http01 import HTTP01Responder
from appliance.tls.storage import ACMEStorage
from tests.support.shared_store import SHARED_STORE_KINDS, open_twice

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
ANSWER = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


class CountingStorage(ACMEStorage):
    """The real storage, counting the listener's reads (to see that a malformed token costs
    none)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, cast(SecretVault, None))  # answers need no vault
        self.reads = 0

    async def challenge(self, token: str) -> str | None:
        self.reads += 1
        return await super().challenge(token)


@pytest.fixture(params=SHARED_STORE_KINDS)
async def two(request: pytest.FixtureRequest, tmp_path: Path
              ) -> AsyncIterator[tuple[CountingStorage, CountingStorage]]:
    async with open_twice(request.param, tmp_path, request) as (one, other):
        yield CountingStorage(one), CountingStorage(other)


async def _listener(tmp_path: Path, responder: HTTP01Responder
                    ) -> tuple[web.AppRunner, str]:
    s = settings_module.load(env={"APPLIANCE_TLS_NAMES": "a.test"},
                             flags={"state_dir": str(tmp_path)})
    runner = web.AppRunner(build_redirect_app(s, 8443, responder))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _get(base: str, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{base}/.well-known/acme-challenge/{token}", allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def test_an_answer_published_by_one_instance_is_served_by_another(
        tmp_path: Path, two: tuple[CountingStorage, CountingStorage]) -> None:
    ordering_store, serving_store = two
    loop = asyncio.get_running_loop()
    ordering, serving = HTTP01Responder(), HTTP01Responder()
    ordering.share(ordering_store, loop)
    serving.share(serving_store, loop)
    runner, base = await _listener(tmp_path, serving)
    try:
        assert (await _get(base, TOKEN))[0] == 404
        # The worker thread publishes; when `add` returns the answer is in the store.
        await asyncio.to_thread(ordering.add, TOKEN, ANSWER)
        assert await _get(base, TOKEN) == (200, ANSWER)
        assert serving.served == 1 and serving.served_from_store == 1
        assert len(serving) == 0  # nothing copied into the other instance's memory
        # The ordering instance answers from memory, without a store read.
        reads = ordering_store.reads
        assert await ordering.lookup(TOKEN) == ANSWER
        assert ordering_store.reads == reads
        # Withdrawn after the order: gone for every instance.
        await asyncio.to_thread(ordering.remove, TOKEN)
        assert (await _get(base, TOKEN))[0] == 404
        row = await serving_store.store.fetch_one("SELECT COUNT(*) AS n FROM acme_challenges")
        assert row == {"n": 0}
    finally:
        await runner.cleanup()


async def test_bad_unknown_and_expired_tokens_are_404(
        tmp_path: Path, two: tuple[CountingStorage, CountingStorage]) -> None:
    publisher, reader = two
    serving = HTTP01Responder()
    serving.share(reader, asyncio.get_running_loop())
    runner, base = await _listener(tmp_path, serving)
    try:
        for malformed in ("a.b", "x" * 300, "a%20b", "t%C3%A9", "a=b"):
            status, body = await _get(base, malformed)
            assert status == 404 and ANSWER not in body, malformed
        assert reader.reads == 0  # a malformed token never reaches the store
        assert (await _get(base, "UnknownToken"))[0] == 404
        assert reader.reads == 1
        # Expired (a holder that died before withdrawing it): not served, and swept by the
        # next publication.
        await publisher.put_challenge(TOKEN, ANSWER, time.time() - 1)
        assert (await _get(base, TOKEN))[0] == 404
        await publisher.put_challenge("Fresh", "Fresh.thumb", time.time() + 60)
        rows = await reader.store.fetch_all("SELECT token FROM acme_challenges")
        assert rows == [{"token": "Fresh"}]
        assert await _get(base, "Fresh") == (200, "Fresh.thumb")
    finally:
        await runner.cleanup()


async def test_a_store_that_refuses_the_answer_stops_the_order(
        two: tuple[CountingStorage, CountingStorage]) -> None:
    """`add` raises when the store cannot take the answer: the CA is never told to validate a
    challenge other instances could not answer."""
    storage, _ = two

    class Refusing(CountingStorage):
        async def put_challenge(self, *args: Any) -> None:
            raise RuntimeError("store down (test)")

    responder = HTTP01Responder()
    responder.share(Refusing(storage.store), asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="store down"):
        await asyncio.to_thread(responder.add, TOKEN, ANSWER)
    with pytest.raises(ValueError, match="base64url"):
        await asyncio.to_thread(responder.add, "a/b", ANSWER)
