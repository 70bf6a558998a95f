"""Leases in the store (`appliance/store/lease.py`), seen by two instances on one store: one
holder at a time, taken over once expired, renewed while kept, released at the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.store import Store
from appliance.store.lease import Lease, instance_id
from tests.support.shared_store import SHARED_STORE_KINDS, open_twice


@pytest.fixture(params=SHARED_STORE_KINDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[tuple[Store, Store]]:
    async with open_twice(request.param, tmp_path, request) as pair:
        yield pair


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_one_holder_at_a_time_then_the_other_after_release(
        stores: tuple[Store, Store]) -> None:
    one, two = stores
    a, b = Lease(one, "acme:x", "a", 30), Lease(two, "acme:x", "b", 30)
    held = await a.acquire()
    assert held.holder == "a"
    refused = await b.acquire()
    assert refused.holder == "a" and refused.expires_at == held.expires_at
    assert (await b.current()) is not None and (await b.current()).holder == "a"  # type: ignore[union-attr]  # checked just before
    again = await a.acquire()  # ours already: extended
    assert again.holder == "a" and again.expires_at >= held.expires_at
    await b.release()  # not b's: nothing happens
    assert (await b.acquire()).holder == "a"
    await a.release()
    assert await a.current() is None
    assert (await b.acquire()).holder == "b"
    assert not await a.renew()  # a's lease is gone: renewing cannot steal it back


async def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it(
        stores: tuple[Store, Store]) -> None:
    one, two = stores
    clock = Clock()
    a = Lease(one, "acme:x", "a", 5, clock=clock)
    b = Lease(two, "acme:x", "b", 5, clock=clock)
    await a.acquire()
    clock.now += 4.9
    assert (await b.acquire()).holder == "a"
    assert await a.renew()  # renewed at 4.9: lasts until 9.9
    clock.now += 4.9
    assert (await b.acquire()).holder == "a"
    clock.now += 0.2  # a died: nobody renewed
    assert await b.current() is None
    assert (await b.acquire()).holder == "b"
    assert not await a.renew()
    assert (await a.acquire()).holder == "b"


async def test_many_racing_acquirers_over_two_connections_one_winner(
        stores: tuple[Store, Store]) -> None:
    one, two = stores
    leases = [Lease(one if i % 2 else two, "acme:race", f"h{i}", 30) for i in range(20)]
    results = await asyncio.gather(*(lease.acquire() for lease in leases))
    winners = {r.holder for r in results}
    assert len(winners) == 1
    (winner,) = winners
    assert sum(1 for lease, r in zip(leases, results, strict=True)
               if r.holder == lease.holder) == 1
    assert winner in {lease.holder for lease in leases}


async def test_keep_renews_and_releases_and_notices_a_loss(stores: tuple[Store, Store]) -> None:
    one, two = stores
    a = Lease(one, "acme:k", "a", 0.3)
    first = await a.acquire()
    async with a.keep() as kept:
        await asyncio.sleep(0.5)  # several renewals (every 0.1 s)
        current = await a.current()
        assert current is not None and current.holder == "a"
        assert current.expires_at > first.expires_at
        assert not kept.lost
    assert await a.current() is None  # released at the end of the block
    # Taken by another while kept (say, the holder was paused longer than the lease): noticed.
    await a.acquire()
    async with a.keep() as kept:
        async with two.transaction() as tx:
            await tx.execute("UPDATE leases SET holder = 'b' WHERE name = 'acme:k'")
        await asyncio.sleep(0.25)
        assert kept.lost
    b = await Lease(two, "acme:k", "b", 30).acquire()
    assert b.holder == "b"  # a's release at the end left b's lease alone


async def test_a_raising_block_still_releases(stores: tuple[Store, Store]) -> None:
    one, _ = stores
    a = Lease(one, "acme:r", "a", 30)
    await a.acquire()
    with pytest.raises(RuntimeError):
        async with a.keep():
            raise RuntimeError("the order failed")
    assert await a.current() is None


def test_bad_duration_and_instance_ids(stores: tuple[Store, Store]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Lease(stores[0], "x", "a", 0)
    first, second = instance_id(), instance_id()
    assert first != second  # a random part: a reused pid is another holder
    assert str(__import__("os").getpid()) in first.split(":")
