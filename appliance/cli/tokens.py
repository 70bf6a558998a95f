"""`appliance tokens create | list | revoke`: API tokens for automation.

Prints a new token once and never again; lists show ids and metadata only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from appliance.auth import ROLES
from appliance.auth.tokens import API, SCOPES
from appliance.cli.common import (
    add_json_option,
    add_state_options,
    emit_json,
    load_settings,
)
from appliance.cli.users import cli_context, open_auth
from appliance.secret import Secret
from appliance.timestamps import rfc3339


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tokens", help="create, list and revoke API tokens",
                            description="API tokens for automation (Authorization: Bearer).")
    verbs = parser.add_subparsers(dest="tokens_verb", metavar="ACTION", required=True)

    p = verbs.add_parser("create", help="create a token for a user (printed once)",
                         description="Create an API token owned by user NAME and print it once. "
                                     "Its role is the owner's unless --role gives a lower one. "
                                     "A token whose role requires two-factor login is refused "
                                     "for an owner who has not enrolled, unless "
                                     "--allow-without-2fa. --scope metrics: a token for GET "
                                     "/metrics only (owner: an admin; no 2FA needed).")
    add_state_options(p)
    p.add_argument("name", metavar="NAME", help="the user who owns the token")
    p.add_argument("--expires", type=float, metavar="DAYS", help="days until it expires")
    p.add_argument("--label", default="cli", help="a name for the token (default: cli)")
    p.add_argument("--role", choices=ROLES, help="a role at most the owner's")
    p.add_argument("--scope", choices=SCOPES, default=API,
                   help="api (the HTTP API, the default) or metrics (GET /metrics only)")
    p.add_argument("--allow-without-2fa", action="store_true",
                   help="create an API token even though its role requires two-factor login "
                        "and the owner has not enrolled (the token then acts without it)")
    p.set_defaults(run=run_create)

    p = verbs.add_parser("list", help="list tokens (never their secrets)",
                         description="List tokens, optionally of one user (or --json). Only "
                                     "reads.")
    add_state_options(p)
    add_json_option(p)
    p.add_argument("name", nargs="?", metavar="NAME", help="only this user's tokens")
    p.set_defaults(run=run_list)

    p = verbs.add_parser("revoke", help="revoke a token by id",
                         description="Revoke a token by its id; it stops working at once.")
    add_state_options(p)
    p.add_argument("token_id", metavar="ID")
    p.set_defaults(run=run_revoke)


def run_create(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def main() -> tuple[Secret[str], str, bool]:
        async with open_auth(settings) as auth:
            owner = await auth.users.require(args.name)
            raw, info = await auth.create_token(owner, name=args.label, role=args.role,
                                                expires_days=args.expires, scope=args.scope,
                                                allow_without_2fa=args.allow_without_2fa,
                                                context=cli_context())
            waived = (args.scope == API and info.role in settings.auth.require_2fa
                      and not owner.totp_enabled)
        return raw, info.id, waived

    raw, token_id, waived = asyncio.run(main())
    if waived:
        print(f"warning: {args.name!r} has not enrolled two-factor login, which this token's "
              f"role requires: the token acts without it (--allow-without-2fa, audited)",
              file=sys.stderr)
    scope = " (metrics scope: GET /metrics only)" if args.scope != API else ""
    print(f"token {token_id} for {args.name!r}{scope} (shown only now):")
    print(raw.reveal())
    return 0


def _when(rfc3339_time: str | None) -> str:
    return "-" if rfc3339_time is None else rfc3339_time[:16] + "Z"


def run_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def main() -> list[dict[str, Any]]:
        async with open_auth(settings) as auth:
            user_id = (await auth.users.require(args.name)).id if args.name else None
            tokens = await auth.tokens.list(user_id)
        return [{"id": token.id, "owner": token.username, "name": token.name,
                 "role": token.role, "scope": token.scope,
                 "state": "active" if token.public()["active"] else "inactive",
                 "expires_at": rfc3339(token.expires_at)} for token in tokens]

    rows = asyncio.run(main())
    if args.json:
        emit_json(rows)
        return 0
    print("id\towner\tname\trole\tscope\tstate\texpires")
    for row in rows:
        print(f"{row['id']}\t{row['owner']}\t{row['name']}\t{row['role']}\t{row['scope']}\t"
              f"{row['state']}\t{_when(row['expires_at'])}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    settings = load_settings(args)

    async def main() -> None:
        async with open_auth(settings) as auth:
            await auth.tokens.revoke(args.token_id, context=cli_context())

    asyncio.run(main())
    print(f"revoked token {args.token_id}")
    return 0
