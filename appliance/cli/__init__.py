"""The command line: `appliance VERB …` (also `python -m appliance`).

Owns argument parsing, the top-level options (`--version`) and exit codes; each verb lives in its
own module and calls services. Never prints a traceback for a user's mistake: an `ApplianceError`
or an `OSError` (a missing file, an unwritable path) ends in one `error:` line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from appliance import __version__
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
    trust,
    users,
    version,
)
from appliance.errors import ApplianceError

VERBS = (init, serve, doctor, version, keys, backup, store, users, tokens, audit, install, trust,
         export)

EXIT_OK = 0
EXIT_FAILED = 1    # the verb ran and found a problem: a doctor check, a broken audit chain, …
EXIT_USAGE = 2     # it could not run as asked: a bad flag, setting, name, file or path
EXIT_INTERRUPTED = 130

EPILOG = f"""exit codes (every verb):
  {EXIT_OK}    done
  {EXIT_FAILED}    the verb ran and found a problem (doctor: a check FAILed; audit verify: the
       chain is broken; keys rotate: a key was kept; store migrate: a check of the copy failed)
  {EXIT_USAGE}    it could not run as asked: a bad flag or setting, an unknown name, a missing or
       unreadable file, an unwritable path, no state directory, the wrong instance secret, a
       refused confirmation
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

`appliance VERB --help` describes each verb. --dev on a verb uses the state of `serve --dev`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="A single-process appliance between browsers and your databases and APIs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}",
                        help="print the version and exit (`appliance version`: more detail)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS:
        module.register(sub)
    return parser


def exit_code(exc: ApplianceError) -> int:
    """The exit code of an error: its class's own, else 2 for a request error (the input was
    wrong: 4xx), else 1."""
    if exc.exit_code != ApplianceError.exit_code:
        return exc.exit_code
    return EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # every file this process creates is private unless chmod-ed on purpose
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except ApplianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:  # a path the user named: missing, unwritable, a directory, …
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
