"""First start: the state directory, the instance secret and the store, created once.

Owns `appliance init`'s effects. Never overwrites an instance secret and never prints one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from appliance import state_dir
from appliance.audit import Context
from appliance.auth import AuthService
from appliance.core import open_core
from appliance.errors import ConfigError
from appliance.keyring import KdfTuning
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store.opener import describe, sqlite_path

INSTANCE_SECRET_BYTES = 32


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # Set when init generated the first admin's password: print it once, never store it.
    one_time_password: Secret[str] | None = None


async def init_state(settings: Settings, *, admin_user: str | None = None,
                     admin_password: Secret[str] | None = None,
                     tuning: KdfTuning | None = None) -> InitReport:
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

    store_path = sqlite_path(settings)
    existed = store_path is None or store_path.exists()  # PostgreSQL: migrated, not created
    async with open_core(settings, unseal=False, writing=admin_user is not None,
                         tuning=tuning) as core:  # creates, migrates
        (report.existing if existed else report.created).append(f"store {describe(settings)}")
        if admin_user is not None:
            await core.unseal()  # the keyring (and its audit key) before the admin's entry
            await ensure_first_admin(core.auth, admin_user, admin_password, report)
    return report


async def ensure_first_admin(auth: AuthService, username: str, password: Secret[str] | None,
                             report: InitReport) -> None:
    """Create `username` as admin if the store has no user at all; otherwise change nothing."""
    count = await auth.users.count()
    if count:
        report.existing.append(f"users ({count}; no admin created)")
        return
    if password is None:
        password = Secret(secrets.token_urlsafe(18))
        report.one_time_password = password
    await auth.users.create(username=username, role="admin", password=password,
                            must_change_password=False, context=Context(actor="cli:init"))
    report.created.append(f"admin user {username!r}")


# -- `init --domain NAME --email ADDR`: the ACME settings in the config file --------------------

_ACME_HTTP_LISTEN = "0.0.0.0:80"


def write_acme_settings(path: Path, domain: str, email: str) -> InitReport:
    """Add `[tls] mode/names/email` (and `[server] http_listen` for HTTP-01) to the config file,
    creating it if needed. A key already set is left as it is and reported; nothing else in the
    file changes. Raises `ConfigError` if the file is not valid TOML."""
    report = InitReport()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    wanted: dict[str, dict[str, object]] = {
        "tls": {"mode": "acme", "names": [domain], "email": email},
        "server": {"http_listen": _ACME_HTTP_LISTEN},
    }
    for section, keys in wanted.items():
        table = data.get(section, {})
        missing = []
        for key, value in keys.items():
            if key in table:
                note = "" if table[key] == value else " (left as it is)"
                report.existing.append(f"{section}.{key} = {json.dumps(table[key])} in {path}"
                                       f"{note}")
            else:
                missing.append(f"{key} = {json.dumps(value)}")
                report.created.append(f"{section}.{key} = {json.dumps(value)} in {path}")
        if missing:
            text = _add_keys(text, section, missing)
    if report.created:
        path.parent.mkdir(parents=True, exist_ok=True)
        tomllib.loads(text)  # never write a file we cannot read back
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return report


def _add_keys(text: str, section: str, lines: list[str]) -> str:
    """Insert `lines` at the top of `[section]`, or append the section."""
    header = re.compile(rf"^\[\s*{section}\s*\][ \t]*(#.*)?$", re.MULTILINE)
    found = header.search(text)
    block = "\n".join(lines)
    if found is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{sep}[{section}]\n{block}\n"
    end = found.end()
    return f"{text[:end]}\n{block}{text[end:]}"
