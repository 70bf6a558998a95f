"""The command line: `appliance VERB …` (also `python -m appliance`).

Owns argument parsing and exit codes; each verb lives in its own module and calls services.
Exit codes: 0 ok, 1 failure, 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from appliance.cli import (
    audit,
    backup,
    doctor,
    export,
    init,
    install,
    keys,
    serve,
    store,
    tokens,
    users,
    version,
)
from appliance.errors import ApplianceError

VERBS = (init, serve, doctor, version, keys, backup, store, users, tokens, audit, install,
         export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="A single-process appliance between browsers and your databases and APIs.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in VERBS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # every file this process creates is private unless chmod-ed on purpose
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ApplianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
