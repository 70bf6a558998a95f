"""SIGHUP: re-read the settings; apply what can change live (TLS files, egress policy, log level);
reopen the audit file sinks (logrotate).

Owns the list of live-changeable settings and the comparison of old and new settings. Never drops a
connection, never applies half of a bad file, never an egress policy that would deny the
PostgreSQL store's own destination (refused and logged, as `PUT /api/v1/egress` refuses it), and
logs setting names only, never their values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance import logs
from appliance.errors import ApplianceError
from appliance.settings import SCHEMA, Settings

if TYPE_CHECKING:
    from appliance.core import Core

log = logging.getLogger("appliance.reload")

# (section, key) that a reload applies; every other changed setting needs a restart.
LIVE: frozenset[tuple[str, str]] = frozenset({
    ("tls", "cert_file"), ("tls", "key_file"), ("tls", "check_interval"),
    *(("egress", key) for key in SCHEMA["egress"]),
    ("log", "level"),
})


@dataclass
class Report:
    """What one reload did: settings applied live, settings that need a restart, an error."""

    applied: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)
    error: str | None = None


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """`section.key` of every setting whose value differs."""
    out = []
    for section, keys in SCHEMA.items():
        old_section, new_section = getattr(old, section), getattr(new, section)
        for key in keys:
            if getattr(old_section, key) != getattr(new_section, key):
                out.append(f"{section}.{key}")
    return out


class Reloader:
    """Holds the settings the process runs with now; `reload()` moves it to a fresh load."""

    def __init__(self, core: Callable[[], Core], current: Settings,
                 load: Callable[[], Settings]) -> None:
        self.core = core  # the serving core, once the application has opened it
        self.current = current
        self.load = load
        self._one_at_a_time = asyncio.Lock()  # SIGHUPs in a row: each reload after the last
        self._running: set[asyncio.Task[None]] = set()

    def on_signal(self) -> None:
        """The SIGHUP handler: starts a reload on the loop (the egress check may resolve the
        store's name)."""
        task = asyncio.get_running_loop().create_task(self._reload_safely(), name="reload")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _reload_safely(self) -> None:
        """A reload that can never take the process down."""
        try:
            await self.reload()
        except Exception as exc:  # a bug here must not end the server
            log.error("reload failed; running settings unchanged",
                      extra={"exception": type(exc).__qualname__})

    async def reload(self) -> Report:
        async with self._one_at_a_time:
            return await self._reload()

    async def _reload(self) -> Report:
        report = Report()
        try:
            new = self.load()
        except ApplianceError as exc:  # ConfigError names the key; nothing is applied
            report.error = exc.message
            log.error("reload refused: settings are invalid; nothing changed",
                      extra={"error": exc.message})
            return report
        changed = changed_settings(self.current, new)
        live = [name for name in changed if tuple(name.split(".", 1)) in LIVE]
        report.restart_needed = [name for name in changed if name not in live]

        # TLS: new file paths (files mode), then a check that re-reads the files (a renewed
        # certificate at the same path is installed too); open connections keep their session.
        tls = self.core().tls
        tls_changed = [name for name in live if name.startswith("tls.")]
        if tls_changed:
            tls.settings = dataclasses.replace(
                tls.settings, cert_file=new.tls.cert_file, key_file=new.tls.key_file,
                check_interval=new.tls.check_interval)
        installed = tls.check()
        if tls_changed or installed:
            report.applied += tls_changed or ["tls (files re-read)"]

        egress_changed = [name for name in live if name.startswith("egress.")]
        if egress_changed:
            try:
                await self.core().egress_runtime.rebase(new.egress)
                report.applied += egress_changed
            except (ValueError, ApplianceError) as exc:  # invalid, or StoreCutOff: the store
                # every instance needs would be denied here
                message = exc.message if isinstance(exc, ApplianceError) else str(exc)
                report.error = message
                log.error("reload: egress settings refused; the old policy stays",
                          extra={"error": message,
                                 "code": getattr(exc, "code", "invalid_setting")})
                new = dataclasses.replace(new, egress=self.current.egress)

        if "log.level" in live:
            report.applied.append("log.level")

        # Audit file sinks: every SIGHUP reopens them (logrotate moved the file away), in a
        # thread: each waits for its sink's lock, which a batch being written holds.
        sinks = self.core().audit_sinks
        if sinks:
            await asyncio.to_thread(sinks.reopen)
            report.applied.append("audit.sinks (reopened)")

        # What needs a restart keeps its old value here, so it is named again on the next reload.
        kept = {section: getattr(self.current, section) for section in ("server", "auth")}
        self.current = dataclasses.replace(
            new, **kept,
            tls=dataclasses.replace(self.current.tls, cert_file=new.tls.cert_file,
                                    key_file=new.tls.key_file,
                                    check_interval=new.tls.check_interval),
            log=dataclasses.replace(self.current.log, level=new.log.level))
        log.info("settings reloaded", extra={"applied": report.applied})
        if report.restart_needed:
            log.warning("settings changed that need a restart to apply",
                        extra={"settings": report.restart_needed})
        if "log.level" in live:  # last, so the lines above are written at the old level
            logs.set_level(new.log.level)
        return report
