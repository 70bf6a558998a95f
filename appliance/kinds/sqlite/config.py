"""A SQLite datasource's config: the database file's absolute path, and whether it is opened
read-only.

Owns the schema of these keys and the rule that the file is never the appliance's own state
(checked on save here, and each time the engine opens the file). Takes no secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from appliance.kinds.schema import Field, InvalidDatasource

_PATH: Final = "config.path"


def in_state_dir(resolved: Path, state: Path) -> bool:
    """Whether `resolved` (a path with every symlink resolved) is the state directory `state`
    (resolved too) or inside it, other than under `demo/` (the demo database of `serve --dev`).
    Checked when a SQLite datasource is saved and each time the engine opens its file."""
    demo = state / "demo"
    return (resolved == state or state in resolved.parents) and demo not in resolved.parents


def check_path(value: Any, state_dir: Path | None) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 4096:
        raise InvalidDatasource("config.path must be an absolute file path", field=_PATH)
    path = Path(value)
    if not path.is_absolute():
        raise InvalidDatasource("config.path must be an absolute file path", field=_PATH)
    if path.is_symlink():
        raise InvalidDatasource("config.path cannot be a symbolic link: give the file it "
                                "points to", field=_PATH)
    if state_dir is not None and in_state_dir(path.resolve(), state_dir.resolve()):
        raise InvalidDatasource("config.path cannot be inside the appliance's state "
                                "directory (it holds the credential store)", field=_PATH)
    return str(path)


FIELDS: Final = (
    Field("path", "File path", "path", required=True, check=check_path, destination=True,
          placeholder="/srv/data/sales.db", help="An absolute path on the appliance host."),
    Field("read_only", "Read only", "boolean", default=True),
)
