"""A state directory whose settings name one required audit file sink, in a directory that does
not exist yet, and the CLI verbs run on it as real `appliance` processes (no tests here).

Owns that state directory's files (settings, the sink's path, a password file for new users) and
the verbs' command line (state directory, settings file, the test store's variables). Never
makes the sink's directory (the test does, when it wants the sink to open) and never prepares
the state directory itself (`tests.support.app.prepare` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import clean_env, run_cli
from tests.support.app import store_env


class Verbs:
    """A prepared state directory whose settings name one required file sink in `logs`, a
    directory that does not exist (yet)."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.logs = root / "logs"
        self.sink = self.logs / "audit.jsonl"
        self.config = root / "appliance.toml"
        self.config.write_text(f'[audit]\nsinks = ["file:{self.sink}"]\n')
        self.password = root / "password"
        self.password.write_text("a-password-of-the-new-user\n")

    def __call__(self, *args: str) -> Any:
        return run_cli(*args, "--state-dir", str(self.state), "--config", str(self.config),
                       env=clean_env(**store_env(self.state)))

    def entries(self) -> list[dict[str, Any]]:
        done = self("audit", "list", "--limit", "1000")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def users(self) -> dict[str, bool]:
        done = self("users", "list", "--json")
        assert done.returncode == 0, done.stderr
        return {user["name"]: user["disabled"] for user in json.loads(done.stdout)}
