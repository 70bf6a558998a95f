"""The command line: `appliance VERB …` (also `python -m appliance`).

Owns argument parsing, the top-level options (`--version`) and exit codes; each verb lives in its
own module and calls services. Never prints a traceback for a user's mistake: an `ApplianceError`
or an `OSError` (a missing file, an unwritable path) ends in one `error:` line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from appliance import __version__
from appliance.errors import ApplianceError

# Each verb → the module under appliance.cli that registers it, in the order `--help` lists them.
# Only the named verb's module is imported (`verb_modules`): most verbs open the whole core, but
# `version`, `install`, `trust` or a verb's `--help` need not pay for it.
VERB_MODULES: dict[str, str] = {
    "init": "init", "serve": "serve", "doctor": "doctor", "version": "version", "keys": "keys",
    "backup": "backup", "restore": "backup", "store": "store", "users": "users",
    "tokens": "tokens", "audit": "audit", "install": "install", "trust": "trust",
    "export": "export", "import": "export",
}
ALL_MODULES = tuple(dict.fromkeys(VERB_MODULES.values()))

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


def verb_modules(argv: Sequence[str] | None = None) -> tuple[str, ...]:
    """The verb modules a command line needs: the named verb's, none for a bare `--version`, and
    all of them when there is no verb, an unknown one or the top-level `--help` (which lists
    them). `argv` None: all of them."""
    for arg in argv if argv is not None else ("--help",):
        if arg in ("-h", "--help"):
            return ALL_MODULES
        if arg == "--version":
            return ()  # argparse prints it and exits before it reads a verb
        if not arg.startswith("-"):
            return (VERB_MODULES[arg],) if arg in VERB_MODULES else ALL_MODULES
    return ALL_MODULES


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`'s verb (`verb_modules`); for every verb when `argv` is None."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="A single-process appliance between browsers and your databases and APIs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}",
                        help="print the version and exit (`appliance version`: more detail)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in verb_modules(argv):
        importlib.import_module(f"appliance.cli.{name}").register(sub)
    return parser


def exit_code(exc: ApplianceError) -> int:
    """The exit code of an error: its class's own, else 2 for a request error (the input was
    wrong: 4xx), else 1."""
    if exc.exit_code != ApplianceError.exit_code:
        return exc.exit_code
    return EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # every file this process creates is private unless chmod-ed on purpose
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "VERB_MODULES", "build_parser", "main",
           "verb_modules"]
