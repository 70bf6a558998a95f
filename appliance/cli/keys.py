"""`appliance keys status | rotate | change-password`: the keyring's state, data key rotation, and
a new instance secret. Prints versions, counts and progress; never a key or a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from appliance import state_dir
from appliance.cli.common import add_state_options, load_settings
from appliance.core import open_core
from appliance.keyring import SecretVault
from appliance.keyring.kdf import ScryptParams
from appliance.keyring.password import change_instance_secret
from appliance.keyring.rotation import rotate, status
from appliance.keyring.sources import (
    SOURCE_CREDENTIAL,
    SOURCE_FILE,
    SOURCE_PASSWORD,
    InstanceSecret,
    password_material,
    read_secret_file,
    secret_file,
)
from appliance.keyring.unseal import read_slots
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "keys", help="keyring status, data key rotation, instance secret change",
        description="Inspect and maintain the keyring that seals every stored credential.")
    verbs = parser.add_subparsers(dest="keys_verb", metavar="ACTION", required=True)

    p = verbs.add_parser(
        "status", help="key versions, the active one, and how many fields each seals",
        description="Show the instance secret's source, the KDF parameters, every data key "
                    "version, which one is active and how many sealed fields each holds.")
    add_state_options(p)
    p.set_defaults(run=run_status)

    p = verbs.add_parser(
        "rotate", help="make a new data key active and re-seal every field with it",
        description="Make a new data key active at once, then re-seal every sealed field with "
                    "it in small transactions, printing progress. Safe to interrupt (even with "
                    "SIGKILL): run it again and it resumes. An old key is retired only when no "
                    "field uses it. Works while `serve` runs; the server picks the new key up.")
    add_state_options(p)
    p.add_argument("--batch-size", type=int, default=200, metavar="N",
                   help="fields re-sealed per transaction (default 200)")
    p.set_defaults(run=run_rotate)

    p = verbs.add_parser(
        "change-password", help="replace the instance secret (re-wraps only the root key)",
        description="Replace the instance secret. Only the wrapped root key is rewritten, so it "
                    "takes the same time for 10 or 100,000 secrets. With the secret in the state "
                    "directory's file, a new random secret replaces it atomically. With a "
                    "systemd credential or the environment password, give the new secret: it "
                    "works at once, the old one keeps working until the new one is first used.")
    add_state_options(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--new-secret-file", type=Path, metavar="FILE",
                       help="the new instance secret (raw bytes, at least 16; e.g. for a systemd "
                            "credential)")
    group.add_argument("--new-password-file", type=Path, metavar="FILE",
                       help="the new APPLIANCE_ENCRYPTION_PASSWORD (file contents, trailing "
                            "newline removed); needs --new-salt")
    p.add_argument("--new-salt", metavar="SALT", help="the new APPLIANCE_ENCRYPTION_SALT")
    p.set_defaults(run=run_change_password)


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Store, SecretVault]]:
    """The existing store and its vault; never creates a state directory or a store."""
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, must_exist=True) as core:
        yield core.store, core.vault


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def run_status(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def main() -> int:
        async with opened(settings) as (store, vault):
            keys = await status(vault)
            slots = await read_slots(store)
        print(f"instance secret: {vault.secret_where}")
        for slot in slots:
            print(f"unseal slot {slot.slot}: {slot.state}, source {slot.source}, "
                  f"{ScryptParams.from_json(slot.kdf).describe()}")
        print(f"keyring generation {vault.generation}, active key v{vault.active_version}")
        print(f"{'version':<8} {'state':<9} {'created':<21} fields")
        for key in keys:
            state = "active" if key.active else ("retiring" if key.created_at else "MISSING")
            print(f"v{key.version:<7} {state:<9} {_when(key.created_at):<21} {key.fields}")
        if len(vault.keyring.keys) > 1:
            print("a rotation is unfinished: run `appliance keys rotate` to complete it")
        return 0

    return asyncio.run(main())


def run_rotate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    interactive = sys.stdout.isatty()

    def progress(done: int, total: int) -> None:
        percent = 100 if total == 0 else done * 100 // total
        line = f"re-sealed {done}/{total} fields ({percent}%)"
        print(f"\r{line}" if interactive else line, end="" if interactive else "\n", flush=True)

    async def main() -> int:
        async with opened(settings) as (_, vault):
            before = vault.active_version
            report = await rotate(vault, batch_size=args.batch_size, progress=progress)
        if interactive:
            print()
        if report.resumed:
            print(f"resumed the unfinished rotation to data key v{report.active}")
        else:
            print(f"data key v{report.active} is active (was v{before})")
        if report.retired:
            print("retired " + ", ".join(f"v{v}" for v in report.retired))
        for problem in report.unreadable:
            print(f"unreadable: {problem}", file=sys.stderr)
        if report.kept:
            print("kept " + ", ".join(f"v{v}" for v in report.kept)
                  + ": still used by fields that do not open (see above)", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())


def run_change_password(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.new_password_file is not None and not args.new_salt:
        print("error: --new-password-file needs --new-salt", file=sys.stderr)
        return 2
    if args.new_salt and args.new_password_file is None:
        print("error: --new-salt goes with --new-password-file", file=sys.stderr)
        return 2

    async def main() -> int:
        async with opened(settings) as (_, vault):
            new: InstanceSecret | None = None
            if args.new_secret_file is not None:
                data = read_secret_file(args.new_secret_file, "new secret file")
                source = (vault.secret_source
                          if vault.secret_source in (SOURCE_FILE, SOURCE_CREDENTIAL)
                          else SOURCE_CREDENTIAL)
                new = InstanceSecret(source, str(args.new_secret_file), Secret(data))
            elif args.new_password_file is not None:
                password = read_secret_file(args.new_password_file, "new password file")
                new = InstanceSecret(SOURCE_PASSWORD, "new password", Secret(password_material(
                    password.rstrip(b"\r\n").decode("utf-8", "surrogateescape"),
                    args.new_salt)))
            report = await change_instance_secret(settings, vault, new=new)
        if report.completed:
            print(f"the instance secret was replaced in {secret_file(settings)}; the old one "
                  "no longer opens the store. Back up the new file now.")
        else:
            print("the new instance secret is registered and works now; the old one keeps "
                  "working until the appliance first starts with the new one. Now put the new "
                  "secret in place (the systemd credential, or APPLIANCE_ENCRYPTION_PASSWORD and "
                  "APPLIANCE_ENCRYPTION_SALT) and restart.")
        return 0

    return asyncio.run(main())
