"""First start: the state directory, the instance secret and the store, created once.

Owns `appliance init`'s effects. Never overwrites an instance secret and never prints one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from appliance import state_dir
from appliance.audit import AuditLog, Context
from appliance.auth import AuthService
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store import Store, open_sqlite_store

INSTANCE_SECRET_BYTES = 32


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # Set when init generated the first admin's password: print it once, never store it.
    one_time_password: Secret[str] | None = None


async def init_state(settings: Settings, *, admin_user: str | None = None,
                     admin_password: Secret[str] | None = None) -> InitReport:
    """Create what is missing; report what was created and what already existed.

    With `admin_user`, also the first admin when the store has no user yet (with
    `admin_password`, or a generated one-time password returned in the report).
    """
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
    try:
        (report.existing if existed else report.created).append(f"store {store_path}")
        if admin_user is not None:
            await ensure_first_admin(store, settings, admin_user, admin_password, report)
    finally:
        await store.close()
    return report


async def ensure_first_admin(store: Store, settings: Settings, username: str,
                             password: Secret[str] | None, report: InitReport) -> None:
    """Create `username` as admin if the store has no user at all; otherwise change nothing."""
    auth = AuthService(store, AuditLog(store), settings.auth)
    count = await auth.users.count()
    if count:
        report.existing.append(f"users ({count}; no admin created)")
        return
    if password is None:
        password = Secret(secrets.token_urlsafe(18))
        report.one_time_password = password
    await auth.users.create(username=username, role="admin", password=password,
                            context=Context(actor="cli:init"))
    report.created.append(f"admin user {username!r}")
