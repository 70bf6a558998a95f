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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.add_argument("--domain", metavar="NAME",
                        help="get a certificate for NAME from Let's Encrypt (ACME): writes "
                             "[tls] mode/names/email and [server] http_listen to the --config "
                             "file (default /etc/appliance/appliance.toml), keeping what is set")
    parser.add_argument("--email", metavar="ADDR", help="ACME account contact (with --domain)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    acme_report = None
    if args.domain is not None or args.email is not None:
        acme_report = _write_acme_settings(args)
    settings = load_settings(args)
    password = None
    if args.admin_password_file is not None:
        password = read_password_file(args.admin_password_file)
    report = asyncio.run(bootstrap.init_state(settings, admin_user=args.admin_user,
                                              admin_password=password))
    if acme_report is not None:
        report.created[:0] = acme_report.created
        report.existing[:0] = acme_report.existing
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


def _write_acme_settings(args: argparse.Namespace) -> bootstrap.InitReport:
    """`--domain NAME --email ADDR`: checked like the settings, then written to the config."""
    from appliance.errors import ConfigError
    from appliance.settings import DEFAULT_CONFIG_FILE, SCHEMA

    if not args.domain or not args.email:
        raise ConfigError("--domain", "--domain and --email go together")
    try:
        domain = SCHEMA["tls"]["names"].parse([args.domain])[0]
    except ValueError as exc:
        raise ConfigError("--domain", str(exc).removeprefix("item 1: ")) from None
    try:
        email = SCHEMA["tls"]["email"].parse(args.email)
    except ValueError as exc:
        raise ConfigError("--email", str(exc)) from None
    path = args.config or DEFAULT_CONFIG_FILE
    args.config = path
    return bootstrap.write_acme_settings(path, domain, email)
