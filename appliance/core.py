"""The application core: every service of one appliance process, opened in one readable order by
one function and closed in one teardown, in reverse.

Owns the wiring (which service gets which) and each service's lifecycle. Never serves HTTP, parses
input or prints: `serve`, every CLI verb and the tests open the same core; the HTTP layer is
routes over it (`http.app`), and nothing here imports the HTTP layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from appliance.audit import AuditLog, BackgroundVerifier, MacKeys
from appliance.audit.anchors import Anchorer
from appliance.audit.retention import Pruner
from appliance.audit.sinks import Sinks, open_sinks
from appliance.auth import AuthService
from appliance.egress import Dialer, PolicyHolder
from appliance.egress.runtime import RuntimeEgress
from appliance.errors import ServiceUnavailable
from appliance.instances import Heartbeat, beating
from appliance.keyring import KdfTuning, SecretVault, open_vault
from appliance.propagation import ChangeFollower, Check
from appliance.settings import Settings
from appliance.store import Store, open_store

if TYPE_CHECKING:  # types only: TLS is `serve`'s (with aiohttp), the rest `unseal()`'s
    from appliance.datasources import DatasourceService
    from appliance.datasources.engine import Engine
    from appliance.queries import QueryService, Runner
    from appliance.tls import TLSManager

log = logging.getLogger("appliance.core")
S = TypeVar("S")


class Core:
    """The services of one process. Those that hold secrets (`vault`, `datasources`, `queries`,
    `runner`) exist once the core is unsealed (`unseal()`, which `serve` does at start)."""

    def __init__(self, settings: Settings, store: Store, *, tls: TLSManager | None = None,
                 egress: Dialer, tuning: KdfTuning | None = None,
                 audit_sinks: Sinks | None = None) -> None:
        self.settings = settings
        self.store = store
        self._tls = tls
        self._tuning = tuning
        # `[audit] sinks`, opened by `open_core` (its opener closes them, after the audit log);
        # SIGHUP reopens them (`reload.py`). Empty when none is configured.
        self.audit_sinks = audit_sinks if audit_sinks is not None else Sinks(())
        # Its MAC keys come from the keyring: given at unseal; a sealed process's first entry
        # unseals (`_audit_keys`). Every entry also goes to the sinks, before its commit.
        self.audit = AuditLog(store, need_keys=self._audit_keys, sinks=self.audit_sinks)
        self.auth = AuthService(store, self.audit, settings.auth, vault=self.unseal)
        # The one dialer of the process (made before the store when the store is PostgreSQL's).
        self.egress = egress
        url = settings.store.url
        self.egress_runtime = RuntimeEgress(
            settings.egress, self.egress,
            store_at=(url.host, url.port) if url.scheme != "sqlite" else None)
        self._vault: SecretVault | None = None
        self._datasources: DatasourceService | None = None
        self._queries: QueryService | None = None
        self._runner: Runner | None = None
        self._heartbeat: Heartbeat | None = None
        self._follower: ChangeFollower | None = None
        self._verifier: BackgroundVerifier | None = None
        self._anchorer: Anchorer | None = None
        self._unsealing = asyncio.Lock()

    async def unseal(self) -> SecretVault:
        """Open the keyring with the instance secret (once), give the audit log its keys (the
        keyring's first audit key added if it has none: an upgraded store) and open the
        services that need it. Raises `InstanceSecretMissing`, `WrongInstanceSecret` or
        `KeyringCorrupted`."""
        async with self._unsealing:
            if self._vault is None:
                self._vault = await open_vault(self.settings, self.store, tuning=self._tuning)
            vault = self._vault
            await vault.ensure_audit_key()  # a read of memory once it has one
            self.audit.use_keys(vault)
            if self._datasources is None:
                # lazy: a sealed verb (`users list`) loads no datasources, kinds or queries
                from appliance.datasources import DatasourceService
                from appliance.queries import QueryService, Runner
                from appliance.queries.secret_findings import SecretFindings
                from appliance.queries.secret_scan import fingerprint_key

                datasources = DatasourceService(
                    self.store, vault, self.egress, self.audit,
                    state_dir=self.settings.server.state_dir.absolute())
                await datasources.bind_legacy_secrets()  # once after an upgrade; then a no-op
                findings = SecretFindings(self.store, self.audit,
                                          fingerprint_key(vault.root_key))
                self._queries = QueryService(self.store, datasources, self.audit, findings)
                self._runner = Runner(self._queries)
                self._datasources = datasources
            return vault

    async def _audit_keys(self, in_transaction: bool) -> MacKeys:
        """The audit keys for a sealed process's first entry (a CLI verb opened with
        `unseal=False` that writes one). Inside a store transaction (which holds the writer)
        only the keyring is opened, writing nothing: a store whose keyring has no audit key yet
        then refuses the entry until a process unseals outside one (`serve`, `audit verify`)."""
        if not in_transaction:
            return await self.unseal()
        async with self._unsealing:
            if self._vault is None:
                self._vault = await open_vault(self.settings, self.store, tuning=self._tuning,
                                               reading_only=True)
            return self._vault

    @property
    def tls(self) -> TLSManager:
        """The certificates of a serving process (CLI verbs have none)."""
        return _opened(self._tls, "TLS is not open in this process (only `serve` has it)",
                       code="unavailable")

    @property
    def heartbeat(self) -> Heartbeat:
        """This process's heartbeat in the store (only `serve` has one)."""
        return _opened(self._heartbeat, "this process records no heartbeat (only `serve` does)",
                       code="unavailable")

    @property
    def vault(self) -> SecretVault:
        return _opened(self._vault, "the keyring is sealed")

    @property
    def datasources(self) -> DatasourceService:
        return _opened(self._datasources, "datasources are not open: the keyring is sealed")

    @property
    def queries(self) -> QueryService:
        return _opened(self._queries, "queries are not open: the keyring is sealed")

    @property
    def runner(self) -> Runner:
        return _opened(self._runner, "the query runner is not open: the keyring is sealed")

    @property
    def verifier(self) -> BackgroundVerifier:
        """The background verifier of the audit chain (only `serve` has one)."""
        return _opened(self._verifier, "this process runs no background verification (only "
                       "`serve` does)", code="unavailable")

    @property
    def follower(self) -> ChangeFollower:
        """What follows other instances' changes (only `serve` has one)."""
        return _opened(self._follower, "this process follows no store changes (only `serve` "
                       "does)", code="unavailable")

    def checks(self) -> list[tuple[str, Check]]:
        """Every cache of this process and how it checks itself against the store after
        another instance's change, in order: the keyring first (what the others open), then
        egress, engines and compiled queries. Token records follow `Store.version()` and
        sessions, users and throttling are read on every request: nothing to check."""
        out: list[tuple[str, Check]] = [("egress", lambda: self.egress_runtime.follow(self.store))]
        if self._vault is not None:
            out.insert(0, ("keyring", self._vault.refresh))
        if self._datasources is not None:
            out.append(("datasources", self._datasources.follow))
        if self._queries is not None:
            out.append(("queries", self._queries.follow))
        return out

    def open_engines(self) -> Sequence[Engine]:
        """The datasource engines running now (none while sealed): for metrics."""
        return self._datasources.open_engines() if self._datasources is not None else ()

    async def close(self) -> None:
        """Close what the core opened, in reverse order (the store is its opener's)."""
        if self._datasources is not None:
            await self._datasources.close()  # every pool; runs under way finish first
        await self.audit.close()


def _opened(service: S | None, why: str, *, code: str = "keyring_unavailable") -> S:
    if service is None:
        raise ServiceUnavailable(why, code=code)
    return service


@contextlib.asynccontextmanager
async def open_core(settings: Settings, *, unseal: bool = True, tls: TLSManager | None = None,
                    serving: bool = False, must_exist: bool = False, writing: bool = False,
                    tuning: KdfTuning | None = None) -> AsyncIterator[Core]:
    """The core over the settings' store (`[store] url`), in this order: egress dialer, the audit
    sinks (`[audit] sinks`: a required one that cannot be opened is a `ConfigError`; opened here
    with `writing` or `serving`, a process that writes entries, else at its first entry if it
    writes one, so a verb that only reads never needs them), store
    (migrated; a PostgreSQL store connects through the dialer), audit, auth,
    egress (with its stored policy), then, with `unseal`, the keyring, datasources (secrets
    sealed before bindings bound once), queries and runner. `serving` adds what only a server
    runs: the instance heartbeat (`appliance.instances`), the change follower (other instances'
    and CLI verbs' changes reach every cache: `appliance.propagation`), the audit chain's
    background verifier and its anchors (`audit.anchors.Anchorer`: the head every
    `audit.anchor_interval`, and once more after the audit log's last entry) and, with `tls`,
    ACME and the certificate's maintenance. `must_exist`: refuse to create a store (read-only
    verbs). Everything is closed in reverse order, also on an error while opening."""
    dialer = Dialer(PolicyHolder(settings.egress))
    async with contextlib.AsyncExitStack() as stack:
        # A CLI verb run as root makes a new sink file its state directory's owner's (the
        # service user's), which it would otherwise lock out of the file.
        sinks = open_sinks(settings.audit.sinks, owner=_state_owner(settings),
                           deferred=not (writing or serving))
        stack.callback(sinks.close)  # last: after the audit log's last entry and anchor
        store = await open_store(settings, dialer, must_exist=must_exist)
        stack.push_async_callback(store.close)
        core = Core(settings, store, tls=tls, tuning=tuning, egress=dialer, audit_sinks=sinks)
        stack.push_async_callback(_stop_anchorer, core)  # after the audit log closed
        stack.push_async_callback(core.close)
        await core.egress_runtime.open(store)
        if unseal:
            vault = await core.unseal()
            log.info("keyring open", extra={"generation": vault.generation,
                                            "active_version": vault.active_version,
                                            "source": vault.secret_source})
        if serving:
            server = settings.server
            core._heartbeat = await stack.enter_async_context(beating(Heartbeat(
                store, address=str(server.listen),
                http_address=str(server.http_listen) if server.http_listen else None,
                interval=server.heartbeat_interval)))
            core._follower = ChangeFollower(store, core.checks())
            core._follower.start()
            stack.push_async_callback(core._follower.close)
            core._verifier = BackgroundVerifier(core.audit,
                                                interval=settings.audit.verify_interval)
            await stack.enter_async_context(_background(core._verifier.run_forever,
                                                        "audit-verify"))
            core._anchorer = Anchorer(core.audit.head, sinks,
                                      interval=settings.audit.anchor_interval,
                                      instance=core._heartbeat.id)
            core._anchorer.start()
            if settings.audit.keep_days > 0:  # retention: at start, then daily
                pruner = Pruner(core.audit, core._verifier, keep_days=settings.audit.keep_days)
                await stack.enter_async_context(_background(pruner.run_forever, "audit-prune"))
            if tls is not None:
                await _open_tls(core, tls)
                await stack.enter_async_context(_background(tls.maintain, "tls-maintenance"))
        yield core


def _state_owner(settings: Settings) -> tuple[int, int] | None:
    """The state directory's owner and group when this process runs as root and they are
    another user's (then a file it creates for the service must be theirs); else None."""
    if os.geteuid() != 0:
        return None
    try:
        info = settings.server.state_dir.absolute().stat()
    except OSError:
        return None
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None


async def _stop_anchorer(core: Core) -> None:
    """The anchor at shutdown: the head after the audit log's last entry."""
    if core._anchorer is not None:
        await core._anchorer.stop()
        core._anchorer = None


async def _open_tls(core: Core, tls: TLSManager) -> None:
    settings = core.settings
    if settings.tls.mode == "acme" and tls.acme is None:
        await tls.open_acme(core.store, core.vault, core.egress, audit=lambda: core.audit,
                            check_interval=settings.tls.renew_check_interval,
                            has_http_listener=settings.server.http_listen is not None)
    if tls.info is None:
        tls.load_initial()


@contextlib.asynccontextmanager
async def _background(work: Callable[[], Awaitable[None]], name: str) -> AsyncIterator[None]:
    """Run `work` as a task while the core is open; cancel it at teardown."""
    task = asyncio.ensure_future(work())
    task.set_name(name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
