"""`appliance backup --out FILE` and `appliance restore FILE`: one file with the store (secrets
still sealed) and metadata, optionally a passphrase-wrapped root key. Never a plaintext secret.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from appliance.cli.common import add_state_options, load_settings
from appliance.cli.keys import opened
from appliance.errors import BadRequest


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "backup", help="write one backup file (store, sealed keyring, metadata)",
        description="Write a consistent snapshot of the store (every secret still sealed, the "
                    "sealed keyring inside it) and metadata to one file (0600). The instance "
                    "secret is NOT in it: keep a copy of it apart. With --passphrase-file, the "
                    "root key is also added, wrapped under the passphrase (scrypt + AES-256-GCM), "
                    "so the backup can be restored without the instance secret.")
    add_state_options(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="backup file")
    parser.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="add the root key wrapped under this passphrase (at least 12 bytes)")
    parser.set_defaults(run=run_backup)

    parser = sub.add_parser(
        "restore", help="restore a backup file into an empty state directory",
        description="Restore a backup into an empty state directory (one holding only the "
                    "instance.key of the backed-up installation counts as empty). The restored "
                    "store is opened and every sealed field checked before anything is replaced. "
                    "With --passphrase-file, the root key comes from the backup and a new "
                    "instance secret is created if none is given. Stop `serve` first.")
    add_state_options(parser)
    parser.add_argument("file", type=Path, metavar="FILE", help="backup file")
    parser.add_argument("--force", action="store_true",
                        help="replace the store of a non-empty state directory")
    parser.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="open the backup's recovery key with this passphrase")
    parser.set_defaults(run=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    from appliance.keyring.backup import read_passphrase, write_backup  # tarfile: only here

    settings = load_settings(args)
    check_out(args.out)
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None

    async def main() -> int:
        async with opened(settings) as (_, vault):
            report = await write_backup(settings, vault, args.out, passphrase=passphrase)
        print(f"wrote {report.path}: store {report.store_bytes} bytes, "
              f"{report.sealed_fields} sealed fields, recovery key "
              f"{'included (passphrase-wrapped)' if report.recovery else 'not included'}")
        if not report.recovery:
            print("restoring it needs this installation's instance secret: keep a copy apart")
        return 0

    return asyncio.run(main())


def check_out(out: Path) -> None:
    """Refuse, before any work, an `--out` that cannot be written: a missing or unwritable
    directory, or a directory given as the file (`BadRequest`: exit 2)."""
    folder = out.absolute().parent
    if not folder.is_dir():
        raise BadRequest(f"--out {out}: the directory {folder} does not exist (create it first, "
                         "preferably apart from the state directory and the instance secret)")
    if out.is_dir():
        raise BadRequest(f"--out {out} is a directory: name the backup file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadRequest(f"--out {out}: the directory {folder} is not writable by this user")


def run_restore(args: argparse.Namespace) -> int:
    from appliance.keyring.backup import read_passphrase, restore_backup

    settings = load_settings(args)
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    report = asyncio.run(restore_backup(settings, args.file, force=args.force,
                                        passphrase=passphrase))
    print(f"restored into {report.state_dir}: {report.sealed_fields} sealed fields, all open "
          f"(instance secret: {report.source})")
    if report.new_secret_file is not None:
        print(f"a new instance secret was written to {report.new_secret_file}: back it up now")
    return 0
