"""First start: the state directory, the instance secret and the store, created once.

Owns `appliance init`'s effects. Never overwrites an instance secret and never prints one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from appliance import state_dir
from appliance.settings import Settings
from appliance.store import open_sqlite_store

INSTANCE_SECRET_BYTES = 32


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


async def init_state(settings: Settings) -> InitReport:
    """Create what is missing; report what was created and what already existed."""
    report = InitReport()
    path = settings.server.state_dir.absolute()
    (report.existing if path.exists() else report.created).append(f"state directory {path}")
    state = state_dir.ensure(path)

    secret_path = state / state_dir.INSTANCE_SECRET_FILE
    try:
        state_dir.write_private(
            secret_path, secrets.token_bytes(INSTANCE_SECRET_BYTES), exclusive=True
        )
        report.created.append(f"instance secret {secret_path}")
    except FileExistsError:
        report.existing.append(f"instance secret {secret_path} (left as it is)")

    store_path = state / state_dir.STORE_FILE
    existed = store_path.exists()
    store = await open_sqlite_store(store_path)
    await store.close()
    (report.existing if existed else report.created).append(f"store {store_path}")
    return report
