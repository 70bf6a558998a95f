"""Write appliance/_build_commit.py with the commit being built, for `appliance version`."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if dirty:
            commit += "-dirty"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    target = ROOT / "appliance" / "_build_commit.py"
    target.write_text(f'"""Stamped by build/stamp_commit.py."""\n\nCOMMIT = "{commit}"\n')
    print(f"stamped commit {commit}")


if __name__ == "__main__":
    main()
