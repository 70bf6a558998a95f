"""`appliance init`: create the state directory, the instance secret and the store.

Idempotent: a second run reports what exists and changes nothing. Never prints a secret.
"""

from __future__ import annotations

import argparse
import asyncio

from appliance import bootstrap
from appliance.cli.common import add_state_options, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "init",
        help="create the state directory, instance secret and store",
        description="Create the state directory (0700), the instance secret (32 random bytes, "
                    "0600) and the store. Safe to run again: it reports what already exists and "
                    "never overwrites a secret.",
    )
    add_state_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    report = asyncio.run(bootstrap.init_state(settings))
    for item in report.created:
        print(f"created  {item}")
    for item in report.existing:
        print(f"exists   {item}")
    if not report.created:
        print("nothing to do: everything already exists")
    return 0
