"""What several verbs share: the `--config`/`--state-dir`/`--dev` options, building the settings,
and the `--json` output of read verbs.

Owns the one call that hands the process environment to the settings loader. Never prints a
secret: `emit_json` is given public views only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance import logs, settings
from appliance.settings import LOG_LEVELS, Settings

# A verb that is not `serve` reports through its own output: the process log (stderr) shows
# only what needs a look, so a log line never lands in a verb's report.
CLI_LOG_LEVEL = "warning"


def add_state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="settings file (default /etc/appliance/appliance.toml when present)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="state directory (default /var/lib/appliance)")
    parser.add_argument("--dev", action="store_true",
                        help="dev mode, as `serve --dev` and `make run`: state in ./.appliance, a "
                             "local CA, localhost:8443; no settings file unless --config")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document for scripts instead of text")


def load_settings(args: argparse.Namespace, *, dev: bool | None = None,
                  serving: bool = False, **flags: Any) -> Settings:
    """Settings from the file, the environment and the flags; `ConfigError` names a bad key.
    `dev`: default `args.dev`. `serving`: the log level of the settings applies (else at least
    warning: a verb's report is its output, not its log)."""
    flags.setdefault("state_dir", getattr(args, "state_dir", None))
    loaded = settings.load(
        config_file=getattr(args, "config", None),
        flags=flags,
        dev=bool(getattr(args, "dev", False)) if dev is None else dev,
    )
    level = loaded.log.level
    if not serving and LOG_LEVELS.index(level) < LOG_LEVELS.index(CLI_LOG_LEVEL):
        level = CLI_LOG_LEVEL
    logs.configure(loaded.log.format, level, journal_stream=loaded.environment.journal_stream)
    return loaded


def emit_json(document: Any) -> None:
    """One JSON document on stdout (sorted keys, UTF-8 kept), for `--json`."""
    json.dump(document, sys.stdout, ensure_ascii=False, sort_keys=True, indent=2)
    sys.stdout.write("\n")


def plural(count: int, noun: str) -> str:
    """`1 field`, `2 fields`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

