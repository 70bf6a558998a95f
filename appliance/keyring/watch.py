"""The keyring's part in a running server: pick up keyrings rotated by other processes (`keys
rotate`) while it runs. Never logs a key or a plaintext.
"""

from __future__ import annotations

import asyncio
import logging

from appliance.errors import ApplianceError
from appliance.keyring.vault import SecretVault

log = logging.getLogger("appliance.keyring")

POLL_SECONDS = 2.0


async def watch(vault: SecretVault, poll_seconds: float) -> None:
    """Re-read the sealed keyring whenever another process (`keys rotate`) wrote a newer one."""
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            await vault.refresh()
        except ApplianceError as exc:
            log.warning("keyring refresh failed", extra={"error": exc.code})
