"""`appliance keys status | rotate | change-password`: the keyring's state, data key rotation, and
a new instance secret. Prints versions, counts and progress; never a key or a secret.

`rotate` and `change-password` are audited (actor `cli:<OS user>`): a `.start` entry committed
before anything changes (fail-closed: no entry, no change), then one naming the outcome, with
versions, counts, the new secret's source and what became of the systemd unit's credential file
in its details (`failed` when the store's secret changed but that file could not be written);
never a key or a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import state_dir
from appliance.audit import AuditLog
from appliance.audit.log import AuditUnavailable
from appliance.cli import unit_credential
from appliance.cli.common import (
    add_json_option,
    add_state_options,
    emit_json,
    load_settings,
)
from appliance.cli.unit_credential import UnitCredential
from appliance.cli.users import cli_context
from appliance.core import Core, open_core
from appliance.errors import ApplianceError
from appliance.keyring import SecretVault
from appliance.keyring.errors import InstanceSecretMissing
from appliance.keyring.kdf import ScryptParams
from appliance.keyring.password import change_instance_secret
from appliance.keyring.rotation import KeyStatus, rotate, status
from appliance.keyring.sources import (
    SOURCE_CREDENTIAL,
    SOURCE_FILE,
    SOURCE_PASSWORD,
    InstanceSecret,
    password_material,
    read_secret_file,
    resolve,
    secret_file,
)
from appliance.keyring.unseal import Slot, open_root, read_slots
from appliance.keyring.vault import load_keyring
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.store import Store
from appliance.timestamps import rfc3339


class ChangeRefused(ApplianceError):
    """`keys change-password` was not confirmed, or would leave the unit with the wrong secret."""

    code = "change_refused"
    exit_code = 2


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
    add_json_option(p)
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
                    "works at once, the old one keeps working until the new one is first used. "
                    "When the installed systemd unit reads the secret from a credential file "
                    "(LoadCredential=), that file is replaced too; for an encrypted one "
                    "(LoadCredentialEncrypted=) the systemd-creds command to run is printed. "
                    "Asks for confirmation on a terminal (--yes for scripts).")
    add_state_options(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--new-secret-file", type=Path, metavar="FILE",
                       help="the new instance secret (raw bytes, at least 16; e.g. for a systemd "
                            "credential)")
    group.add_argument("--new-password-file", type=Path, metavar="FILE",
                       help="the new APPLIANCE_ENCRYPTION_PASSWORD (file contents, trailing "
                            "newline removed); needs --new-salt")
    p.add_argument("--new-salt", metavar="SALT", help="the new APPLIANCE_ENCRYPTION_SALT")
    p.add_argument("--yes", action="store_true",
                   help="do not ask for confirmation (scripts); without a terminal it is needed")
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="the system root where the installed unit is looked for (default /)")
    p.set_defaults(run=run_change_password)


ROTATE_ACTION = "keyring.rotate"
CHANGE_ACTION = "keyring.secret_change"


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Store, SecretVault]]:
    """The existing store and its vault; never creates a state directory or a store."""
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, must_exist=True) as core:
        yield core.store, core.vault


@asynccontextmanager
async def opened_to_change(settings: Settings) -> AsyncIterator[Core]:
    """`opened` for a verb that changes the keyring: the core itself (its audit log), with the
    audit sinks opened at once, so a required one that cannot be opened stops the verb (exit 2)
    before it reads or changes anything."""
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, must_exist=True, writing=True) as core:
        yield core


@dataclass
class Outcome:
    """What an audited block reports for its entry: the outcome and details (no secret)."""

    outcome: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def audited(audit: AuditLog, action: str) -> AsyncIterator[Outcome]:
    """`action`.start committed before the block runs (`AuditUnavailable` stops it first), then
    `action` with the block's outcome; `error` (naming the error's code) when it raises. Each
    entry commits on its own: the block is many transactions, and one killed half-way leaves
    its start entry."""
    context = cli_context()
    await audit.record(action=f"{action}.start", context=context)
    report = Outcome()
    try:
        yield report
    except Exception as exc:
        code = exc.code if isinstance(exc, ApplianceError) else type(exc).__name__
        with suppress(AuditUnavailable):  # the block's own error is what the user must see
            await audit.record(action=action, outcome="error", context=context,
                               details={**report.details, "error": code})
        raise
    await audit.record(action=action, outcome=report.outcome, details=report.details,
                       context=context)


def _when(rfc3339: str | None) -> str:
    return "-" if rfc3339 is None else rfc3339.replace("T", " ")


def run_status(args: argparse.Namespace) -> int:
    """Only reads: a store without a keyring yet says so (the keyring is created by the first
    `serve` or stored secret, never by looking at it)."""
    settings = load_settings(args)

    async def main() -> dict[str, Any]:
        state_dir.check(settings.server.state_dir.absolute())
        async with open_core(settings, unseal=False, must_exist=True) as core:
            slots = await read_slots(core.store)
            if not slots:
                return {"keyring": None, "unseal_slots": [], "keys": [],
                        "instance_secret": None, "rotation_unfinished": False}
            vault = await read_vault(core.store, resolve(settings), slots)
            keys = await status(vault)
            unfinished = len(vault.keyring.keys) > 1
        return {
            "instance_secret": {"source": vault.secret_source, "where": vault.secret_where},
            "unseal_slots": [{"slot": slot.slot, "state": slot.state, "source": slot.source,
                              "kdf": ScryptParams.from_json(slot.kdf).describe()}
                             for slot in slots],
            "keyring": {"generation": vault.generation, "active_version": vault.active_version},
            "keys": [{"version": key.version, "state": _state(key), "fields": key.fields,
                      "created_at": rfc3339(key.created_at)} for key in keys],
            "rotation_unfinished": unfinished,
        }

    report = asyncio.run(main())
    if args.json:
        emit_json(report)
        return 0
    if report["keyring"] is None:
        print("no keyring yet: it is created when `appliance serve` first starts on this store "
              "(or a secret is first stored); nothing is sealed")
        return 0
    print(f"instance secret: {report['instance_secret']['where']}")
    for slot in report["unseal_slots"]:
        print(f"unseal slot {slot['slot']}: {slot['state']}, source {slot['source']}, "
              f"{slot['kdf']}")
    keyring = report["keyring"]
    print(f"keyring generation {keyring['generation']}, active key v{keyring['active_version']}")
    print(f"{'version':<8} {'state':<9} {'created':<21} sealed fields")
    for key in report["keys"]:
        print(f"v{key['version']:<7} {key['state']:<9} {_when(key['created_at']):<21} "
              f"{key['fields']}")
    if report["rotation_unfinished"]:
        print("a rotation is unfinished: run `appliance keys rotate` to complete it")
    return 0


async def read_vault(store: Store, secret: InstanceSecret, slots: list[Slot]) -> SecretVault:
    """The vault as it is, opened for reading: unlike `open_vault`, never creates a keyring nor
    completes a pending secret change (a read-only verb changes nothing)."""
    root, slot = await open_root(slots, secret)
    row = await store.fetch_one(
        "SELECT generation, root_verifier, sealed FROM keyring WHERE id = 1")
    return SecretVault(store, root, load_keyring(root, row), secret, slot.slot)


def _state(key: KeyStatus) -> str:
    return "active" if key.active else ("retiring" if key.created_at else "MISSING")


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
        async with opened_to_change(settings) as core, audited(core.audit, ROTATE_ACTION) as entry:
            before = core.vault.active_version
            report = await rotate(core.vault, batch_size=args.batch_size, progress=progress)
            entry.outcome = "failed" if report.kept else "ok"
            entry.details = {
                "active_version": report.active, "previous_version": before,
                "resumed": report.resumed, "resealed": report.resealed,
                "retired_versions": report.retired, "kept_versions": report.kept,
                "unreadable": len(report.unreadable)}
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
    credential = unit_credential.find(args.root)

    async def main() -> int:
        async with opened_to_change(settings) as core:
            vault = core.vault
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
            elif vault.secret_source != SOURCE_FILE:
                raise InstanceSecretMissing(
                    f"the instance secret comes from {vault.secret_where}; give the new one with "
                    "--new-secret-file FILE, or --new-password-file FILE --new-salt SALT")
            follows = _credential_plan(settings, vault.secret_source, credential, new)
            _confirm(args, vault.secret_where, follows)
            async with audited(core.audit, CHANGE_ACTION) as entry:
                entry.details = {"new_source": new.source if new is not None else SOURCE_FILE}
                report = await change_instance_secret(settings, vault, new=new)
                entry.details["completed"] = report.completed
                now_in = secret_file(settings) if report.completed else args_source(new)
                unit = _follow_unit(credential, follows, now_in)
                if unit is not None:  # the entry says what became of the unit's file too
                    entry.details["unit_file"] = unit.details()
                    if unit.error:
                        entry.outcome = "failed"
        return _finish(settings, report.completed, unit)

    return asyncio.run(main())


def _credential_plan(settings: Settings, source: str, credential: UnitCredential | None,
                     new: InstanceSecret | None) -> str:
    """What happens to the unit's credential: "" (no unit, or the secret is not kept in a
    file), "write" (a plain file: replaced too) or "encrypted" (printed: what to run).
    Refuses (exit 2, nothing changed) a unit credential that already differs from the
    secret this store opens with: that needs a look first (`appliance doctor`)."""
    if credential is None or (new is not None and new.source == SOURCE_PASSWORD):
        return ""
    if credential.encrypted:
        return "encrypted"
    current = credential.reads()
    if source == SOURCE_FILE and current is not None:
        here = secret_file(settings)
        if current != here.read_bytes() and not unit_credential.same_file(credential.path, here):
            raise ChangeRefused(
                f"the unit's credential {credential.path} (named in {credential.unit}) does not "
                f"hold the secret in {here} that this command opens the store with: find out "
                "which one the store needs (`appliance doctor`), make them the same, then run "
                "this again. Nothing was changed")
    return "write"


def _confirm(args: argparse.Namespace, where: str, follows: str) -> None:
    """Ask on a terminal; `--yes` for scripts; with neither, refuse (exit 2)."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise ChangeRefused("keys change-password replaces the instance secret: confirm with "
                            "--yes (no terminal to ask on). Nothing was changed")
    extra = {"write": " and the systemd unit's credential", "encrypted": "",
             "": ""}[follows]
    print(f"This replaces the instance secret (now: {where}){extra}. Keep the backup of the old "
          "one until the service has restarted with the new one.", file=sys.stderr)
    answer = input("Replace it? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise ChangeRefused("not confirmed: nothing was changed")


@dataclass(frozen=True)
class UnitFollowed:
    """What became of the systemd unit's credential file after a secret change: written with
    the secret in `source`, left for systemd-creds (`encrypted`), or not written (`error`)."""

    credential: UnitCredential
    source: Path
    error: str = ""  # why it could not be written: the errno's text, never the secret

    def details(self) -> dict[str, Any]:
        """For the audit entry (no secret: the file's path and what happened to it)."""
        written = not self.error and not self.credential.encrypted
        found: dict[str, Any] = {"path": str(self.credential.path), "written": written}
        if self.credential.encrypted:
            found["encrypted"] = True
        if self.error:
            found["error"] = self.error
        return found


def _follow_unit(credential: UnitCredential | None, follows: str,
                 source: Path | None) -> UnitFollowed | None:
    """Replace the unit's credential file with the secret in `source` (a plain file), or say
    an encrypted one is left to systemd-creds; None when the unit has nothing to follow."""
    if credential is None or source is None or follows not in ("write", "encrypted"):
        return None
    if follows == "write":
        try:
            credential.replace(source.read_bytes())
        except OSError as exc:  # e.g. run as the service user: /etc/appliance is root's
            return UnitFollowed(credential, source, exc.strerror or type(exc).__name__)
    return UnitFollowed(credential, source)


def _finish(settings: Settings, completed: bool, unit: UnitFollowed | None) -> int:
    if completed:
        print(f"the instance secret was replaced in {secret_file(settings)}; the old one "
              "no longer opens the store. Back up the new file now.")
    else:
        print("the new instance secret is registered and works now; the old one keeps "
              "working until the appliance first starts with the new one.")
    if unit is None:
        if not completed:
            print("Now put the new secret in place (the systemd credential, or "
                  "APPLIANCE_ENCRYPTION_PASSWORD and APPLIANCE_ENCRYPTION_SALT) and restart.")
        return 0
    path = unit.credential.path
    if unit.error:
        print(f"the systemd unit's credential {path} could not be written ({unit.error}): "
              "the service will not start until it is. As root, run:\n"
              f"  install -m 600 {unit.source} {path} && systemctl restart appliance",
              file=sys.stderr)
        return 1
    if unit.credential.encrypted:
        print(f"the systemd unit reads an encrypted credential ({path}): write the new secret "
              f"into it, then restart:\n  {unit.credential.how_to_encrypt(unit.source)}")
    else:
        print(f"the systemd unit's credential {path} holds the new secret too: "
              "`systemctl restart appliance` to use it")
    return 0


def args_source(new: InstanceSecret | None) -> Path | None:
    """The file a new secret given on the command line was read from (not for a password)."""
    if new is None or new.source == SOURCE_PASSWORD:
        return None
    return Path(new.where)
