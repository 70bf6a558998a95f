"""`appliance init`: create the state directory, the instance secret and the store.

Idempotent: a second run reports what exists and changes nothing. Never prints a secret, except
the generated one-time password of the first admin, once.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from appliance import bootstrap
from appliance.cli.common import add_state_options, load_settings
from appliance.errors import BadRequest
from appliance.secret import Secret


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "init",
        help="create the state directory, instance secret and store",
        description="Create the state directory (0700), the instance secret (32 random bytes, "
                    "0600) and the store. Safe to run again: it reports what already exists and "
                    "never overwrites a secret.",
    )
    add_state_options(parser)
    parser.add_argument("--admin-user", metavar="NAME", default="admin",
                        help="the first admin's user name (default: admin); created only when "
                             "the store has no user yet")
    parser.add_argument("--admin-password-file", type=Path, metavar="FILE",
                        help="read the first admin's password from FILE (at least 12 "
                             "characters); without it a one-time password is printed once")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    password = None
    if args.admin_password_file is not None:
        password = read_password_file(args.admin_password_file)
    report = asyncio.run(bootstrap.init_state(settings, admin_user=args.admin_user,
                                              admin_password=password))
    for item in report.created:
        print(f"created  {item}")
    for item in report.existing:
        print(f"exists   {item}")
    if not report.created:
        print("nothing to do: everything already exists")
    if report.one_time_password is not None:
        print(f"one-time password for {args.admin_user!r} (shown only now; change it after the "
              f"first login): {report.one_time_password.reveal()}")
    return 0


def read_password_file(path: Path) -> Secret[str]:
    """A password from a file (one trailing newline removed); `BadRequest` when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"cannot read password file {path}: "
                         f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    return Secret(text[:-1] if text.endswith("\n") else text)
