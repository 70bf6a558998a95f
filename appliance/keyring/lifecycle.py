"""The keyring's part in a running server: open the vault once the store is open (refusing to
start on a wrong or missing instance secret) and pick up keyrings rotated by other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from appliance.errors import ApplianceError
from appliance.keyring.kdf import DEFAULT_TUNING, KdfTuning
from appliance.keyring.vault import SecretVault, open_vault

log = logging.getLogger("appliance.keyring")

POLL_SECONDS = 2.0


def keyring_lifecycle(settings_key: Any, store_key: Any, vault_key: Any, *,
                      poll_seconds: float = POLL_SECONDS,
                      tuning: KdfTuning = DEFAULT_TUNING,
                      ) -> Callable[[Any], AsyncIterator[None]]:
    """A `cleanup_ctx` function: `app[vault_key]` is the vault while the application runs.

    Takes the application's keys as arguments so this package never imports the HTTP layer.
    """

    async def lifecycle(app: Any) -> AsyncIterator[None]:
        vault = await open_vault(app[settings_key], app[store_key], tuning=tuning)
        app[vault_key] = vault
        log.info("keyring open", extra={"generation": vault.generation,
                                        "active_version": vault.active_version,
                                        "source": vault.secret_source})
        task = asyncio.create_task(watch(vault, poll_seconds), name="keyring-watch")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifecycle


async def watch(vault: SecretVault, poll_seconds: float) -> None:
    """Re-read the sealed keyring whenever another process (`keys rotate`) wrote a newer one."""
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            await vault.refresh()
        except ApplianceError as exc:
            log.warning("keyring refresh failed", extra={"error": exc.code})
