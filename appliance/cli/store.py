"""`appliance store migrate --to URL`: copy this instance's SQLite store into an empty PostgreSQL
database, check the copy there (every sealed field opens, the audit chain is intact) before it
commits, and print the settings to change.

Owns the verb's options, the checks it asks of the copy and the settings it prints. Never prints,
logs or accepts in the URL the PostgreSQL password; never writes to a target that is not empty,
and never copies a store an `appliance serve` is alive on (what it writes after the snapshot would
be lost).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from appliance import settings as settings_module
from appliance import state_dir
from appliance.audit import verify_store
from appliance.cli.common import add_state_options, load_settings
from appliance.core import open_core
from appliance.errors import ConfigError, StoreError, StoreUnavailable
from appliance.instances import list_instances
from appliance.keyring import SecretVault
from appliance.keyring.sources import resolve
from appliance.keyring.vault import open_vault_with
from appliance.settings import Settings, StoreSettings
from appliance.store import Store
from appliance.store.opener import postgres_target, sqlite_path

TLS_MODES = ("verify-full", "require", "disable")


class StoreInUse(StoreError):
    """An `appliance serve` on the source store is alive (its heartbeat is recent): what it
    writes after the snapshot would not be copied. Stop it first; a crashed one's heartbeat
    ages out by itself within a few of its intervals, so no override is offered."""

    code = "store_in_use"
    exit_code = 2


async def refuse_if_served(store: Store) -> None:
    """`StoreInUse` naming the first instance whose heartbeat says it is alive."""
    now = time.time()
    for instance in await list_instances(store):
        if instance.alive(now):
            raise StoreInUse(
                f"`appliance serve` is running on this store (instance {instance.id} on "
                f"{instance.hostname}, pid {instance.pid}, {instance.address}, seen "
                f"{instance.seen_ago(now):.0f} s ago): stop it, then migrate; what it wrote "
                "after the copy would be lost. Nothing was copied")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("store", help="the configuration store: move it into PostgreSQL",
                            description="The configuration store ([store] url).")
    verbs = parser.add_subparsers(dest="store_verb", metavar="ACTION", required=True)
    p = verbs.add_parser(
        "migrate", help="copy this SQLite store into an empty PostgreSQL database",
        description="Copy this instance's SQLite store (a consistent snapshot of it) into an "
                    "EMPTY PostgreSQL database, in one transaction: the schema (unless the "
                    "database holds a fresh one), every row, then on the target, before it "
                    "commits, every sealed field opened with the instance secret and the audit "
                    "chain verified. A database holding any appliance row, an older schema or "
                    "other tables is refused and left untouched. Refused while an `appliance "
                    "serve` on this store is alive (its heartbeat says so): stop it first. "
                    "Prints the [store] settings to use. Exit 2: bad URL or options, "
                    "unreachable or non-TLS server, target not empty, no source store, a serve "
                    "still running on it; exit 1: a check failed (nothing was committed).")
    add_state_options(p)
    p.add_argument("--to", required=True, metavar="URL",
                   help="postgresql://USER@HOST:PORT/DATABASE (no password in it)")
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="file (0600) with the PostgreSQL password on one line (default: the "
                        "systemd credential store-password, if present)")
    p.add_argument("--tls", choices=TLS_MODES, default="verify-full",
                   help="verify-full (default), require (unverified) or disable")
    p.add_argument("--ca-file", type=Path, metavar="FILE",
                   help="PEM bundle to verify the server with (default: the system's)")
    p.set_defaults(run=run_migrate)


def target_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """This instance's settings with the target as its `[store]`: `ConfigError` names the
    option that is wrong."""
    try:
        url = settings_module.parse_store_url(args.to)
    except ValueError as exc:
        raise ConfigError("--to", str(exc)) from None
    if url.scheme != "postgresql":
        raise ConfigError("--to", "names a PostgreSQL database: "
                                  "postgresql://USER@HOST:PORT/DATABASE")
    if args.ca_file is not None and args.tls != "verify-full":
        raise ConfigError("--ca-file", "is only used with --tls verify-full")
    password_file = args.password_file.absolute() if args.password_file else None
    ca_file = args.ca_file.absolute() if args.ca_file else None
    return dataclasses.replace(settings, store=StoreSettings(
        url=url, password_file=password_file, tls=args.tls, ca_file=ca_file))


def run_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    source = sqlite_path(settings)
    if source is None:
        raise ConfigError("store.url", f"this instance's store is already PostgreSQL "
                                       f"({settings.store.url}); `store migrate` copies a "
                                       "SQLite store")
    target = target_settings(settings, args)
    state_dir.check(settings.server.state_dir.absolute())
    if not source.exists():
        raise StoreUnavailable(f"no store at {source}: nothing to migrate (check --state-dir, "
                               "--config and [store] url)")
    return asyncio.run(_migrate(settings, target))


async def _migrate(settings: Settings, target: Settings) -> int:
    from appliance.store.postgres import PostgresStore  # asyncpg: only for this verb
    from appliance.store.to_postgres import CopyRefused, move_into

    where = postgres_target(target)  # reads the password (file or credential) now
    async with open_core(settings, must_exist=True) as core:
        await refuse_if_served(core.store)
        vault = core.vault
        fields = await _open_every_field(vault, "this store")
        audit = await core.audit.verify()
        if not audit.ok:
            raise CopyRefused(f"this store's audit chain is broken at position {audit.position} "
                              f"({audit.reason}); run `appliance audit verify`. Nothing was "
                              "copied")
        secret = resolve(settings)

        async def check(copied: Store) -> None:
            # Once more before the commit: a serve started since the first look is refused too.
            await refuse_if_served(core.store)
            opened = await open_vault_with(secret, copied)
            count = await _open_every_field(opened, "the copy")
            if count != fields:
                raise CopyRefused(f"the copy holds {count} sealed fields, this store {fields}; "
                                  "nothing was committed")
            chain = await verify_store(copied, opened)
            if not chain.ok or chain.entries != audit.entries:
                raise CopyRefused(f"the copy's audit chain does not verify ({chain.reason or ''} "
                                  f"{chain.entries}/{audit.entries} entries); nothing was "
                                  "committed")

        with tempfile.TemporaryDirectory(prefix=".migrate-",
                                         dir=settings.server.state_dir.absolute()) as scratch:
            snapshot = Path(scratch) / "store.db"
            await core.store.snapshot(snapshot)
            report = await move_into(snapshot, PostgresStore(where, core.egress), check)
    rows = sum(report.rows.values())
    print(f"copied {rows} rows of {len(report.rows)} tables into {report.target} in one "
          f"transaction ({'schema created' if report.created_schema else 'its fresh schema'})")
    print(f"checked there before committing: {fields} sealed fields open with the instance "
          f"secret, audit chain intact ({audit.entries} entries)")
    print()
    print(settings_text(target, vault.secret_where, settings.config_file))
    return 0


async def _open_every_field(vault: SecretVault, what: str) -> int:
    count, bad = await vault.check_every_field()
    if bad:
        from appliance.store.to_postgres import CopyRefused

        raise CopyRefused(f"{len(bad)} sealed field(s) of {what} do not open; first: {bad[0]}. "
                          "Nothing was committed")
    return count


def settings_text(target: Settings, secret_where: str, config_file: Path | None) -> str:
    """What to write in every instance's settings, as TOML, with what goes beside it."""
    store = target.store
    where = config_file or settings_module.DEFAULT_CONFIG_FILE
    lines = [f"Now set, in the settings of every instance ({where}):", "", "[store]",
             f"url = {json.dumps(str(store.url))}"]
    if store.password_file is not None:
        lines.append(f"password_file = {json.dumps(str(store.password_file))}")
    else:
        lines.append("# password: the systemd credential store-password (LoadCredential=)")
    lines.append(f"tls = {json.dumps(store.tls)}")
    if store.ca_file is not None:
        lines.append(f"ca_file = {json.dumps(str(store.ca_file))}")
    lines += ["", f"Give every instance the same instance secret (this one's: {secret_where}), "
                  "then restart them. The SQLite file is no longer read: keep it (with a "
                  "`backup`) until the PostgreSQL store has served for a while."]
    return os.linesep.join(lines)
