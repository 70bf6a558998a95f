"""Instance heartbeats: each serving process's row in the store (a random id, its version and
schema, host, address, when it started and when it was last seen), and the reading of everyone's.

Owns the `instances` table. Never holds a transaction across a sleep or any network I/O, never
records a secret (an instance id is random, not a credential), and never lets a store failure
reach the request path or stop the server: a failed beat is logged once and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.store import Store, Transaction
from appliance.store.migrations import LATEST

log = logging.getLogger("appliance.instances")

# The policy, as data. An instance is alive while its last beat is at most ALIVE_BEATS of its own
# intervals old, plus ALIVE_SLACK seconds (a busy store, a busy loop, clocks a little apart);
# rows not seen for PRUNE_AFTER seconds (a SIGKILLed or crashed instance) are deleted by any
# instance's next beat.
ALIVE_BEATS = 3
ALIVE_SLACK = 2.0
PRUNE_AFTER = 86400.0
REMOVE_WITHIN = 5.0  # seconds a clean stop waits to delete its row (else the row ages out)

_COLUMNS = ("id, version, schema_version, hostname, address, http_address, pid, beat_interval, "
            "started_at, last_seen")


@dataclass(frozen=True)
class Instance:
    """One row of the `instances` table."""

    id: str
    version: str
    schema_version: int
    hostname: str
    address: str
    http_address: str | None
    pid: int
    beat_interval: float
    started_at: float
    last_seen: float

    def seen_ago(self, now: float) -> float:
        """Seconds since its last beat (never negative: another host's clock may be ahead)."""
        return max(0.0, now - self.last_seen)

    def alive(self, now: float) -> bool:
        return now - self.last_seen <= self.beat_interval * ALIVE_BEATS + ALIVE_SLACK


async def list_instances(store: Store) -> list[Instance]:
    """Every instance not yet pruned, alive or not, oldest start first."""
    rows = await store.fetch_all(
        f"SELECT {_COLUMNS} FROM instances ORDER BY started_at, id")  # _COLUMNS is a constant
    return [Instance(id=row["id"], version=row["version"],
                     schema_version=int(row["schema_version"]), hostname=row["hostname"],
                     address=row["address"], http_address=row["http_address"],
                     pid=int(row["pid"]), beat_interval=float(row["beat_interval"]),
                     started_at=float(row["started_at"]), last_seen=float(row["last_seen"]))
            for row in rows]


class Heartbeat:
    """This process's heartbeat: written at start, every `interval` seconds and whenever its
    address changes (`serving_on`), deleted at a clean stop (`beating`)."""

    def __init__(self, store: Store, *, address: str, http_address: str | None = None,
                 interval: float, clock: Callable[[], float] = time.time) -> None:
        self.id = secrets.token_hex(6)  # tells instances apart; grants nothing
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.interval = interval
        self.started_at = clock()
        self._store = store
        self._clock = clock
        self._address = address
        self._http_address = http_address
        self._failing = False

    def __repr__(self) -> str:
        return f"<Heartbeat {self.id} {self.hostname} {self._address}>"

    @property
    def address(self) -> str:
        return self._address

    async def serving_on(self, address: str, http_address: str | None = None) -> None:
        """The listeners' real addresses, once bound (port 0 is only known then): beat now, so
        the row names them before the server says it listens (a failure is logged, as ever)."""
        self._address, self._http_address = address, http_address
        await self.beat_or_log()

    async def beat(self) -> None:
        """Write this instance's row and prune long-dead ones, in one short transaction."""
        now = self._clock()
        async with self._store.transaction() as tx:
            await self._write(tx, now)
            await tx.execute("DELETE FROM instances WHERE last_seen < ?", (now - PRUNE_AFTER,))

    async def _write(self, tx: Transaction, now: float) -> None:
        await tx.execute(
            f"INSERT INTO instances ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET address = excluded.address, "
            "http_address = excluded.http_address, beat_interval = excluded.beat_interval, "
            "last_seen = excluded.last_seen",
            (self.id, __version__, LATEST, self.hostname, self._address, self._http_address,
             self.pid, self.interval, self.started_at, now))

    async def beat_or_log(self) -> None:
        """A beat whose failure is logged once (and its recovery once), never raised."""
        try:
            await self.beat()
        except Exception as exc:  # a store outage, a full disk, a lost connection: retry
            if not self._failing:
                self._failing = True
                # An ApplianceError's message is written for users (never a secret or a value);
                # anything else is named by its type only.
                reason = exc.message if isinstance(exc, ApplianceError) else type(exc).__name__
                log.warning("instance heartbeat failed; retrying every interval",
                            extra={"instance": self.id, "error": reason,
                                   "interval_s": self.interval})
            return
        if self._failing:
            self._failing = False
            log.info("instance heartbeat recovered", extra={"instance": self.id})

    async def run(self) -> None:
        """Beat every `interval` seconds."""
        while True:
            await asyncio.sleep(self.interval)
            await self.beat_or_log()

    async def remove(self) -> None:
        """Delete this instance's row (a clean stop); a failure is logged, never raised."""
        try:
            async with asyncio.timeout(REMOVE_WITHIN), self._store.transaction() as tx:
                await tx.execute("DELETE FROM instances WHERE id = ?", (self.id,))
        except Exception as exc:  # TimeoutError too: a stop never hangs on a store that does
            reason = exc.message if isinstance(exc, ApplianceError) else type(exc).__name__
            log.warning("instance heartbeat not removed; it ages out",
                        extra={"instance": self.id, "error": reason})


@contextlib.asynccontextmanager
async def beating(heartbeat: Heartbeat) -> AsyncIterator[Heartbeat]:
    """Beat once now, then in a background task while the block runs; at its end stop the
    task and remove the row."""
    await heartbeat.beat_or_log()
    task = asyncio.ensure_future(heartbeat.run())
    task.set_name("instance-heartbeat")
    try:
        yield heartbeat
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await heartbeat.remove()
