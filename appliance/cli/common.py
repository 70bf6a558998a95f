"""What several verbs share: the `--config`/`--state-dir` options and building the settings.

Owns the one call that hands the process environment to the settings loader.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance import logs, settings
from appliance.settings import Settings


def add_state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="settings file (default /etc/appliance/appliance.toml when present)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="state directory (default /var/lib/appliance)")


def load_settings(args: argparse.Namespace, *, dev: bool = False, **flags: Any) -> Settings:
    """Settings from the file, the environment and the flags; `ConfigError` names a bad key."""
    flags.setdefault("state_dir", getattr(args, "state_dir", None))
    loaded = settings.load(
        config_file=getattr(args, "config", None),
        flags=flags,
        dev=dev,
    )
    logs.configure(loaded.log.format, loaded.log.level,
                   journal_stream=loaded.environment.journal_stream)
    return loaded
