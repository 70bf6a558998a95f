"""Obtaining and renewing the ACME certificate: start-up, the renewal loop, forced renewals.

Owns the decision to order (due, not backing off, and holding the store's ACME lease, so one
instance of several orders; the renewal-information (ARI) lookups too, so one instance writes
the schedule every instance follows), running the `acme` package in a worker thread, checking
what the CA returned, persisting it and installing it in the live context, and following the
store: a certificate another instance stored is installed here within
`renewal.FOLLOW_INTERVAL`. Never blocks the event loop, never orders or writes an ARI schedule
without the lease, never orders a certificate that is not due, and never replaces a valid
certificate with anything but a newer valid one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from appliance.egress import Dialer
from appliance.errors import ApplianceError, TLSError
from appliance.secret import Secret
from appliance.settings import TLSSettings
from appliance.store.base import to_the_end
from appliance.store.lease import Lease
from appliance.timestamps import rfc3339
from appliance.tls import renewal
from appliance.tls.acme_client import ACMEClient, ari_cert_id, new_key_pem
from appliance.tls.certificates import CertificateInfo, load_pair
from appliance.tls.errors import ACMEBusy, ACMEConfigError, ACMEError, ACMERateLimited
from appliance.tls.http01 import HTTP01Responder
from appliance.tls.storage import ACMEStorage, CertRecord, names_key
from appliance.tls.transport import EgressRoute

log = logging.getLogger("appliance.tls.acme")
T = TypeVar("T")

Installer = Callable[[bytes, Secret[bytes], CertificateInfo], None]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Outcome:
    """What one attempt did (for the API and the tests)."""

    renewed: bool
    info: CertificateInfo | None
    error: str | None = None


class ACMEIssuer:
    """Keeps a valid certificate for `settings.names` from `settings.directory`."""

    def __init__(self, settings: TLSSettings, storage: ACMEStorage, dialer: Dialer,
                 responder: HTTP01Responder, install: Installer, lease: Lease, *,
                 check_interval: float = renewal.CHECK_INTERVAL,
                 has_http_listener: bool = True) -> None:
        self.settings = settings
        self.storage = storage
        self.dialer = dialer
        self.responder = responder
        self._install = install
        self.check_interval = check_interval
        self.has_http_listener = has_http_listener
        self.lease = lease
        self.names = names_key(settings.names)
        self.record: CertRecord | None = None
        self.info: CertificateInfo | None = None  # the ACME certificate being served, if any
        self._served_chain: bytes | None = None  # its chain, as stored
        self._seen_version: float | None = None  # the record's updated_at when last read
        self.busy: tuple[str, dt.datetime] | None = None  # another's lease: holder, until
        self.attempt_running = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._listeners_up = asyncio.Event()

    # -- start-up -------------------------------------------------------------------------------

    async def load(self) -> bool:
        """Install the stored certificate if it is valid for the names; True if one was."""
        self.record = await self.storage.ensure_record(self.names, self.settings.directory)
        return await self._adopt(self.record)

    async def _adopt(self, record: CertRecord) -> bool:
        """Install the record's certificate if it is not the one served, usable, for the names,
        and newer than the one served; True if it was installed."""
        if record.chain_pem is None or record.chain_pem == self._served_chain:
            return False
        key = await self.storage.certificate_key(self.names)
        if key is None:
            log.warning("acme certificate without its key in the store: a new one is due")
            return False
        try:
            info = load_pair(record.chain_pem, key.reveal(), origin="stored ACME certificate")
        except TLSError as exc:
            log.warning("stored acme certificate unusable", extra={"error": exc.message})
            return False
        if not info.covers(self.settings.names) or not renewal.is_newer(info, self.info):
            return False
        self._install(record.chain_pem, key, info)
        self.info, self._served_chain = info, record.chain_pem
        return True

    async def refresh(self, *, force: bool = False) -> bool:
        """Read the record again if it changed in the store (one indexed read; `force`: read it
        anyway) and install a certificate another instance stored; True if the record changed.
        """
        version = await self.storage.certificate_version(self.names)
        if not force and version is not None and version == self._seen_version:
            return False
        record = await self.storage.certificate(self.names)
        if record is None:
            return False
        self._seen_version, self.record = version, record
        if not self.attempt_running and await self._adopt(record):
            log.info("acme certificate taken from the store",
                     extra={"names": list(self.settings.names),
                            "not_after": record.not_after.isoformat()
                            if record.not_after else None})
        return True

    async def follow(self, every: float = renewal.FOLLOW_INTERVAL) -> None:
        """Until cancelled: every `every` seconds, pick up what other instances stored (a
        certificate, a schedule) and wake the renewal loop when something changed."""
        while True:
            await asyncio.sleep(every)
            try:
                if await self.refresh():
                    self.wake()
            except ApplianceError as exc:
                log.warning("acme store check failed", extra={"error": exc.message})
            except Exception:
                log.exception("acme store check crashed; trying again")

    def listeners_ready(self) -> None:
        """The HTTP-01 listener answers: issuance may start."""
        self._listeners_up.set()

    # -- the loop -------------------------------------------------------------------------------

    def due(self, now: dt.datetime | None = None) -> bool:
        """An order is due: no (usable) certificate, another CA, or past its renewal time."""
        now = now or _now()
        record = self.record
        if record is None or self.info is None:
            return True
        if record.directory != self.settings.directory:
            return True
        return record.renew_at is None or now >= record.renew_at

    def backing_off(self, now: dt.datetime | None = None) -> bool:
        record = self.record
        now = now or _now()
        return bool(record and record.next_attempt and now < record.next_attempt)

    def next_wake(self, now: dt.datetime) -> float:
        """Seconds until the next thing to do, at most the check interval."""
        candidates = [self.check_interval]
        elsewhere = self.busy is not None and self.busy[1] > now
        if self.busy is not None and elsewhere:
            # Another instance's lease: look again when it runs out (once: a lease seen expired
            # is no reason to wake again).
            candidates.append((self.busy[1] - now).total_seconds() + 0.05)
        record = self.record
        if record is not None:
            for when in (record.next_attempt, record.renew_at, record.ari_next_check):
                # A time already past is the lease holder's to act on, meanwhile (what it
                # stores wakes this loop through `follow`): no waking every 50 ms until then.
                if when is not None and not (elsewhere and when <= now):
                    candidates.append((when - now).total_seconds())
        return max(0.05, min(candidates))

    async def run(self) -> None:
        """Until cancelled: wait for the listeners, then check, sleep, check again."""
        await self._listeners_up.wait()
        while True:
            try:
                await self.check()
            except ApplianceError as exc:  # already recorded; keep the loop alive
                log.warning("acme check failed", extra={"error": exc.message})
            except Exception:
                log.exception("acme check crashed; retrying at the next check")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.next_wake(_now()))

    async def check(self) -> Outcome | None:
        """One scheduled check: refresh ARI when it is time, then order if due and allowed."""
        now = _now()
        if self.record is None:
            await self.load()
        await self.refresh()  # another instance may have renewed, or failed and backed off
        if self.info is not None and self._ari_due(now) and not self.due(now):
            await self._refresh_ari_alone()
        if not self.due(now) or self.backing_off(now):
            return None
        return await self.renew(reason="due")

    async def renew(self, *, reason: str = "forced", actor: str = "system") -> Outcome:
        """Order now (`reason` "forced" ignores the schedule but not a CA's Retry-After);
        `actor` is who asked, for the audit log."""
        async with self._lock:
            holding = await self.lease.acquire()
            if holding.holder != self.lease.holder:
                until = dt.datetime.fromtimestamp(holding.expires_at, dt.UTC)
                self.busy = (holding.holder, until)
                if reason == "forced":
                    raise ACMEBusy(
                        f"another instance ({holding.holder}) is ordering the certificate now "
                        "(its lease runs until "
                        f"{until:%H:%M:%S} UTC); this one serves the result within a second of "
                        "it being stored")
                return Outcome(False, self.info)
            self.busy = None
            async with self.lease.keep():
                # Read the schedule again now that no one else may order: another instance may
                # have renewed (or failed and backed off) just before we took the lease.
                if self.record is None:
                    await self.storage.ensure_record(self.names, self.settings.directory)
                await self.refresh(force=True)
                record = self.record
                assert record is not None  # ensured above
                now = _now()
                if (reason == "forced" and record.last_error and record.next_attempt
                        and record.next_attempt > now and "rate limited" in record.last_error):
                    raise ACMERateLimited(
                        f"the CA asked us to wait until {record.next_attempt:%Y-%m-%d %H:%M} "
                        f"UTC: {record.last_error}", retry_at=record.next_attempt)
                if reason != "forced" and not (self.due(now) and not self.backing_off(now)):
                    return Outcome(False, self.info)
                return await self._attempt(record, reason, actor)

    def wake(self) -> None:
        self._wake.set()

    # -- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, record: CertRecord, reason: str, actor: str) -> Outcome:
        settings = self.settings
        directory = settings.directory
        self.attempt_running = True
        current = self.info
        first = current is None
        action = "tls.certificate.issue" if first else "tls.certificate.renew"
        orders = 0
        try:
            wildcards = [n for n in settings.names if n.startswith("*.")]
            if wildcards:
                raise ACMEConfigError(
                    f"{', '.join(wildcards)}: wildcard names need the DNS-01 challenge, and the "
                    "appliance answers HTTP-01 only; list each name instead")
            if not self.has_http_listener:
                raise ACMEError("no plain-HTTP listener for the HTTP-01 challenge: set "
                                "server.http_listen (e.g. \"0.0.0.0:80\") and open port 80")
            account_key, account_uri = await self.storage.account(directory)
            if account_key is None:
                account_key = await self.storage.create_account_key(directory, new_key_pem)
            cert_key = await self.storage.create_certificate_key(self.names, new_key_pem)
            replaces_pem = (record.chain_pem if current is not None
                            and record.directory == directory else None)
            client = ACMEClient(
                directory_url=directory, account_key_pem=account_key, account_uri=account_uri,
                email=settings.email, eab_kid=settings.eab_kid,
                eab_hmac_key=settings.eab_hmac_key, ca_bundle=settings.ca_bundle,
                route=EgressRoute(self.dialer, asyncio.get_running_loop()),
                responder=self.responder)
            try:
                chain, ari_time, ari_next, replaced = await _in_thread(
                    client, functools.partial(self._issue_sync, client, cert_key, replaces_pem))
            finally:
                orders = client.orders_placed
                if client.account_uri != account_uri:
                    await self.storage.save_account_uri(directory, client.account_uri)
                client.close()
            try:
                info = load_pair(chain, cert_key.reveal(), origin="the CA's certificate")
            except TLSError as exc:
                raise ACMEError(f"the CA returned an unusable certificate: {exc.message}"
                                ) from None
            if not info.covers(settings.names):
                raise ACMEError("the CA returned a certificate for other names: "
                                f"{', '.join(info.names)}")
            if not renewal.is_newer(info, current):
                raise ACMEError("the CA returned a certificate that is not newer than the one "
                                "served; keeping the current one")
            renew_at = renewal.renew_at(info, ari_time)
            # Stored first, then served here: the status never shows a certificate without its
            # schedule, and other instances pick it up from the store.
            await self.storage.record_success(
                self.names, directory=directory, chain_pem=chain, not_after=info.not_after,
                renew_at=renew_at, ari_next_check=ari_next, orders=orders, action=action,
                details={"reason": reason, "issuer": info.issuer,
                         "not_after": info.not_after.isoformat(),
                         "names": list(info.names), "replaces": replaced,
                         "fingerprint_sha256": info.fingerprint_sha256}, actor=actor)
            self.record = await self.storage.certificate(self.names)
            self._install(chain, cert_key, info)
            self.info, self._served_chain = info, chain
            log.info("acme certificate obtained",
                     extra={"names": list(info.names), "issuer": info.issuer,
                            "not_after": info.not_after.isoformat(), "reason": reason,
                            "renew_at": renew_at.isoformat(), "ari": ari_time is not None})
            return Outcome(True, info)
        except ACMEError as exc:
            await self._failed(record, exc, orders, action, reason, actor)
            raise
        finally:
            self.attempt_running = False

    def _issue_sync(self, client: ACMEClient, cert_key: Secret[bytes],
                    replaces_pem: bytes | None
                    ) -> tuple[bytes, dt.datetime | None, dt.datetime | None, str | None]:
        """In the worker thread: the whole conversation with the CA."""
        has_ari = client.has_ari()
        replaces = ari_cert_id(replaces_pem) if replaces_pem and has_ari else None
        chain = client.issue(self.settings.names, cert_key, profile=self.settings.profile,
                             replaces=replaces)
        ari_time = ari_next = None
        if has_ari:
            try:
                ari_time, ari_next = client.renewal_window(chain)
            except ACMEError as exc:  # the certificate is good; fall back to the ratio
                log.warning("acme renewal information unavailable", extra={"error": exc.message})
                ari_next = _now() + renewal.ARI_RETRY
        return chain, ari_time, ari_next, replaces

    async def _failed(self, record: CertRecord, exc: ACMEError, orders: int, action: str,
                      reason: str, actor: str) -> None:
        now = _now()
        failures = record.failures + 1
        next_attempt = renewal.next_attempt_after_failure(now, failures, exc.retry_at)
        log.warning("acme attempt failed",
                    extra={"error": exc.message, "code": exc.code, "failures": failures,
                           "next_attempt": next_attempt.isoformat(),
                           "serving": "acme" if self.info else "temporary self-signed"})
        try:
            await self.storage.record_failure(
                self.names, error=exc.message, failures=failures, next_attempt=next_attempt,
                orders=orders, action=action, details={"reason": reason, "code": exc.code},
                actor=actor)
            self.record = await self.storage.certificate(self.names)
        except ApplianceError as store_exc:
            log.error("cannot record the acme failure", extra={"error": store_exc.message})

    # -- ARI ------------------------------------------------------------------------------------

    def _ari_due(self, now: dt.datetime) -> bool:
        record = self.record
        return bool(record and record.ari_next_check and now >= record.ari_next_check)

    async def _refresh_ari_alone(self) -> None:
        """Ask the CA for its renewal window under the ordering lease, so that of several
        instances one asks and writes the schedule (a random point in the window: the last
        writer's would win) and the others follow it from the store. With another holding the
        lease (ordering, or asking), this one leaves it to that one."""
        async with self._lock:
            holding = await self.lease.acquire()
            if holding.holder != self.lease.holder:
                self.busy = (holding.holder, dt.datetime.fromtimestamp(holding.expires_at, dt.UTC))
                return
            self.busy = None
            async with self.lease.keep() as kept:
                # Read the schedule again now that no one else may write it: another instance
                # may have asked just before we took the lease.
                await self.refresh(force=True)
                now = _now()
                if self.info is None or not self._ari_due(now) or self.due(now):
                    return
                schedule = await self._ask_ari()
                if schedule is None or kept.lost:
                    return
                renew, again = schedule
                await self.storage.save_schedule(self.names, renew_at=renew,
                                                 ari_next_check=again)
                self.record = await self.storage.certificate(self.names)

    async def _ask_ari(self) -> tuple[dt.datetime | None, dt.datetime] | None:
        """(renew_at, when to ask again) from the CA's renewal window; None without a
        certificate or an account to ask with."""
        record = self.record
        if record is None or record.chain_pem is None or self.info is None:
            return None
        settings = self.settings
        account_key, account_uri = await self.storage.account(settings.directory)
        if account_key is None:
            return None
        client = ACMEClient(
            directory_url=settings.directory, account_key_pem=account_key,
            account_uri=account_uri, email=settings.email, eab_kid=settings.eab_kid,
            eab_hmac_key=settings.eab_hmac_key, ca_bundle=settings.ca_bundle,
            route=EgressRoute(self.dialer, asyncio.get_running_loop()),
            responder=self.responder)
        chain = record.chain_pem
        try:
            when, again = await _in_thread(client, functools.partial(client.renewal_window,
                                                                      chain))
        except ACMEError as exc:
            log.warning("acme renewal information unavailable", extra={"error": exc.message})
            when, again = None, _now() + renewal.ARI_RETRY
            renew = record.renew_at
        else:
            renew = renewal.renew_at(self.info, when)
        finally:
            client.close()
        return renew, again

    # -- status ---------------------------------------------------------------------------------

    def next_renewal(self) -> dt.datetime | None:
        """When the certificate is next ordered: its renewal time, or the next attempt after a
        failure (now, when there is no certificate for this directory yet)."""
        record = self.record
        if record is None:
            return None
        candidates = [w for w in (record.renew_at, record.next_attempt) if w is not None]
        if self.info is None or record.directory != self.settings.directory:
            candidates = [record.next_attempt or _now()]
        return max(candidates) if candidates else None

    def status(self) -> dict[str, Any]:
        record = self.record
        return {
            "directory": self.settings.directory,
            "next_renewal": rfc3339(self.next_renewal()),
            "renew_at": rfc3339(record.renew_at) if record else None,
            "last_attempt": rfc3339(record.last_attempt) if record else None,
            "last_success": rfc3339(record.last_success) if record else None,
            "last_error": record.last_error if record else None,
            "failures": record.failures if record else 0,
            "next_attempt": rfc3339(record.next_attempt) if record else None,
            "orders": record.orders if record else 0,
            "attempt_running": self.attempt_running,
            "instance": self.lease.holder,
            "lease_holder": self.busy[0] if self.busy and self.busy[1] > _now() else None,
        }


async def _in_thread(client: ACMEClient, talk: Callable[[], T]) -> T:
    """`talk` (a conversation with the CA through `client`) in a worker thread. Cancelled (the
    process is stopping), the conversation is cut short (`client.stop`) and its end waited for:
    the thread never outlives its caller (it would hold the process's exit until a request of
    its timed out, or the order its deadline)."""
    return await to_the_end(asyncio.to_thread(talk), on_cancel=client.stop)
