"""`appliance users add | list | groups | disable | enable | reset-2fa | reset-password`: manage
accounts from the shell.

Every change is audited (actor `cli:<os user>`). Never prints a password, except a generated
one-time password, once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from appliance import state_dir
from appliance.audit import Context
from appliance.auth import ROLES, AuthService
from appliance.auth.service import TwoFactorReset
from appliance.auth.users import Reset, User
from appliance.cli.common import (
    add_json_option,
    add_state_options,
    emit_json,
    load_settings,
    plural,
)
from appliance.cli.init import read_password_file
from appliance.core import open_core
from appliance.errors import BadRequest
from appliance.groups import check_group
from appliance.secret import Secret
from appliance.settings import Settings
from appliance.timestamps import rfc3339


def cli_context() -> Context:
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    return Context(actor=f"cli:{name}", client="local")


@asynccontextmanager
async def open_auth(settings: Settings) -> AsyncIterator[AuthService]:
    """The auth service of the state directory's core (the keyring unsealed only if needed)."""
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, unseal=False) as core:
        yield core.auth


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "users", help="add, list, disable users; reset their 2FA",
        description="Manage user accounts. Roles: admin (everything), developer (datasources "
                    "and queries), viewer (lists and runs queries).")
    verbs = parser.add_subparsers(dest="users_verb", metavar="ACTION", required=True)

    p = verbs.add_parser("add", help="create a user",
                         description="Create a user. Without --password-file a one-time "
                                     "password is generated and printed once. Either way the "
                                     "user must choose their own password at the first login "
                                     "(until then their session reaches nothing else), unless "
                                     "--no-password-change.")
    add_state_options(p)
    p.add_argument("name", help="user name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="read the password (at least 12 characters) from FILE")
    p.add_argument("--no-password-change", action="store_true",
                   help="with --password-file: the user keeps this password (an account for "
                        "automation whose password the operator manages); recorded in the "
                        "audit entry")
    p.add_argument("--group", action="append", default=[], metavar="GROUP",
                   help="a group the user belongs to (repeat for more): a viewer sees the "
                        "queries of their groups and those for every viewer")
    p.set_defaults(run=run_add)

    p = verbs.add_parser("list", help="list users",
                         description="List users, one per line (or --json). Only reads.")
    add_state_options(p)
    add_json_option(p)
    p.set_defaults(run=run_list)

    p = verbs.add_parser(
        "groups", help="show or change a user's groups",
        description="Show a user's groups, or add and remove some (names are compared without "
                    "case). A viewer sees the queries listed for one of their groups and those "
                    "for every viewer; the change counts from the user's next request. "
                    "Audited as user.update.")
    add_state_options(p)
    add_json_option(p)
    p.add_argument("name", help="user name")
    p.add_argument("--add", action="append", default=[], metavar="GROUP",
                   help="add the user to GROUP (repeat for more)")
    p.add_argument("--remove", action="append", default=[], metavar="GROUP",
                   help="remove the user from GROUP (repeat for more)")
    p.set_defaults(run=run_groups)

    for verb, helptext in (("disable", "disable a user: sessions end and API tokens are revoked "
                                       "for good"),
                           ("enable", "enable a disabled user again (no token comes back)")):
        p = verbs.add_parser(verb, help=helptext, description=helptext.capitalize() + ".")
        add_state_options(p)
        p.add_argument("name", help="user name")
        p.set_defaults(run=run_disable if verb == "disable" else run_enable)

    p = verbs.add_parser("reset-2fa", help="remove a user's TOTP and recovery codes",
                         description="Remove a user's TOTP secret and recovery codes, end "
                                     "their sessions and revoke their API tokens for good; "
                                     "they enrol again at the next login. Audited as "
                                     "2fa.reset.")
    add_state_options(p)
    p.add_argument("name", help="user name")
    p.set_defaults(run=run_reset_2fa)

    p = verbs.add_parser(
        "reset-password", help="set a new password for a user who lost theirs",
        description="Set a new password for a user (e.g. a lost admin password). Without "
                    "--password-file a one-time password is generated and printed once: give "
                    "it to the user, who must change it at their next login (until then their "
                    "session reaches nothing else). Every session of "
                    "the user ends and every live API token of theirs is revoked for good. "
                    "Audited as user.password.reset (actor cli:<OS user>).")
    add_state_options(p)
    p.add_argument("name", help="user name")
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="read the new password (at least 12 characters) from FILE")
    p.set_defaults(run=run_reset_password)


def run_add(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    generated = args.password_file is None
    if generated and args.no_password_change:
        print("error: --no-password-change needs --password-file (a generated one-time "
              "password is printed, so its user must change it)", file=sys.stderr)
        return 2
    password = (Secret(secrets.token_urlsafe(18)) if generated
                else read_password_file(args.password_file))

    async def main() -> None:
        async with open_auth(settings) as auth:
            await auth.users.create(username=args.name, role=args.role, password=password,
                                    must_change_password=not args.no_password_change,
                                    groups=args.group, context=cli_context())

    asyncio.run(main())
    print(f"created user {args.name!r} ({args.role})"
          + (f" in {', '.join(sorted({g.lower() for g in args.group}))}" if args.group else ""))
    if generated:
        print(f"one-time password (shown only now; they must change it at their first login): "
              f"{password.reveal()}")
    elif not args.no_password_change:
        print("they must choose their own password at their first login")
    return 0


def run_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def main() -> list[tuple[User, tuple[str, ...]]]:
        async with open_auth(settings) as auth:
            return [(u, await auth.groups.of(u.id)) for u in await auth.users.list()]

    listed = asyncio.run(main())
    users = [u for u, _ in listed]
    if args.json:
        emit_json([{"name": u.username, "role": u.role, "disabled": u.disabled,
                    "totp_enabled": u.totp_enabled, "groups": list(member_of),
                    "must_change_password": u.must_change_password,
                    "created_at": rfc3339(u.created_at)}
                   for u, member_of in listed])
        return 0
    print("name\trole\tstate\t2fa")
    for u in users:
        print(f"{u.username}\t{u.role}\t{'disabled' if u.disabled else 'enabled'}\t"
              f"{'on' if u.totp_enabled else 'off'}")
    return 0


def run_groups(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    add = {check_group(g, field="--add") for g in args.add}
    remove = {check_group(g, field="--remove") for g in args.remove}
    if add & remove:
        raise BadRequest(f"a group cannot be added and removed at once: "
                         f"{', '.join(sorted(add & remove))}", code="bad_group")

    async def main() -> tuple[str, ...]:
        async with open_auth(settings) as auth:
            user = await auth.users.require(args.name)
            if add or remove:
                now = (set(await auth.groups.of(user.id)) | add) - remove
                await auth.users.change(args.name, groups=sorted(now), context=cli_context())
            return await auth.groups.of(user.id)

    member_of = asyncio.run(main())
    if args.json:
        emit_json({"name": args.name, "groups": list(member_of)})
    elif member_of:
        print(f"{args.name} is in: {', '.join(member_of)}")
    else:
        print(f"{args.name} is in no group (a viewer then sees only the queries for every "
              f"viewer)")
    return 0


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    settings = load_settings(args)

    async def main() -> tuple[str, ...]:
        async with open_auth(settings) as auth:
            change = await auth.users.change(args.name, disabled=disabled, context=cli_context())
        return change.revoked_tokens

    revoked = asyncio.run(main())
    print(f"{'disabled' if disabled else 'enabled'} user {args.name!r}")
    if revoked:
        print(f"revoked {len(revoked)} API token(s) for good: {', '.join(revoked)}")
    if not disabled:
        print("no API token comes back: disabling revoked them; create new ones if needed")
    return 0


def run_disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def run_enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def run_reset_2fa(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def main() -> TwoFactorReset:
        async with open_auth(settings) as auth:
            return await auth.reset_2fa(args.name, context=cli_context())

    reset = asyncio.run(main())
    print(f"two-factor login reset for {args.name!r}; "
          f"{plural(reset.sessions_ended, 'session')} ended, "
          f"{plural(len(reset.revoked_tokens), 'API token')} revoked for good"
          + (f" ({', '.join(reset.revoked_tokens)})" if reset.revoked_tokens else "")
          + "; they enrol again at the next login")
    return 0


def run_reset_password(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    generated = args.password_file is None
    password = (Secret(secrets.token_urlsafe(18)) if generated
                else read_password_file(args.password_file))

    async def main() -> Reset:
        async with open_auth(settings) as auth:
            return await auth.users.reset_password(args.name, password, context=cli_context())

    reset = asyncio.run(main())
    print(f"new password set for {args.name!r}; {plural(reset.sessions_ended, 'session')} "
          f"ended, {plural(len(reset.revoked_tokens), 'API token')} revoked for good"
          + (f" ({', '.join(reset.revoked_tokens)})" if reset.revoked_tokens else ""))
    if generated:
        print(f"one-time password (shown only now; they must change it at their next login): "
              f"{password.reveal()}")
    return 0
