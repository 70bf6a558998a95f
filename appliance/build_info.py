"""Which commit this build comes from: read from the git checkout the package runs from, else
stamped into `_build_commit.py` by `make binary` (the binary has no checkout), else "unknown".

Never runs anything but `git rev-parse`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def commit() -> str:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        try:
            # Written by build/stamp_commit.py into the binary's build only, never in a checkout.
            from appliance._build_commit import COMMIT  # type: ignore[import-not-found]  # binary
        except ImportError:
            return "unknown"
        return str(COMMIT)
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
