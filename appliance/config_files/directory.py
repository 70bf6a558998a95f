"""An export's directory on disk: reading it (plain files only, each size-limited, UTF-8, nothing
outside it) and writing a new export in place of an earlier one in one rename.

Owns the file-system side of the format: the limits, the refusal of symbolic links and of
anything that is not an export file, and the swap that leaves the old export whole if the process
dies half-way. Never follows a link and never writes outside the directory's parent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from appliance.config_files.errors import InvalidConfigFile
from appliance.config_files.layout import DATASOURCES, MANIFEST, QUERIES, check_path
from appliance.state_dir import fsync_dir

MAX_FILE_BYTES: Final = 4 * 1024 * 1024  # far above any query body the API takes (1 MiB)
MAX_TOTAL_BYTES: Final = 64 * 1024 * 1024
MAX_FILES: Final = 20_000
FOLDERS: Final = (DATASOURCES, QUERIES)


class NotAnExport(InvalidConfigFile):
    """`export DIR` will not replace a directory that is neither empty nor an earlier export."""

    code = "not_an_export"


def check_limits(files: Mapping[str, str]) -> None:
    """The same limits for files from a directory and from `POST /api/v1/import`."""
    if len(files) > MAX_FILES:
        raise InvalidConfigFile(".", f"more than {MAX_FILES} files")
    total = 0
    for path, text in files.items():
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_FILE_BYTES:
            check_path(path)
            raise InvalidConfigFile(path, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        total += size
    if total > MAX_TOTAL_BYTES:
        raise InvalidConfigFile(".", f"the files hold more than "
                                     f"{MAX_TOTAL_BYTES // (1024 * 1024)} MiB")


def decode(path: str, data: bytes) -> str:
    """UTF-8 text, or InvalidConfigFile at the line and column of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidConfigFile(path, "not UTF-8 text", line=line, column=column) from None


def _listing(root: Path) -> list[str]:
    """Every file's path under `root`, checked to be an export's: plain files in the format's
    places, no link, no other folder."""
    try:
        top = sorted(os.scandir(root), key=lambda entry: entry.name)
    except FileNotFoundError:
        raise InvalidConfigFile(".", f"no directory {root}") from None
    except NotADirectoryError:
        raise InvalidConfigFile(".", f"{root} is not a directory") from None
    paths: list[str] = []
    for entry in top:
        if entry.is_symlink():
            raise InvalidConfigFile(entry.name, "a symbolic link: an export holds plain files "
                                                "only")
        if entry.name in FOLDERS and entry.is_dir(follow_symlinks=False):
            for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                path = f"{entry.name}/{inner.name}"
                if inner.is_symlink():
                    raise InvalidConfigFile(path, "a symbolic link: an export holds plain "
                                                  "files only")
                if not inner.is_file(follow_symlinks=False):
                    raise InvalidConfigFile(path, "not a plain file")
                check_path(path)
                paths.append(path)
        elif entry.name == MANIFEST and entry.is_file(follow_symlinks=False):
            paths.append(MANIFEST)
        else:
            raise InvalidConfigFile(entry.name, f"not a file of an export: the directory holds "
                                                f"{MANIFEST}, {DATASOURCES}/ and {QUERIES}/ only")
        if len(paths) > MAX_FILES:
            raise InvalidConfigFile(".", f"more than {MAX_FILES} files")
    return paths


def read_directory(root: Path) -> dict[str, str]:
    """The files of the export at `root`, path → text."""
    files: dict[str, str] = {}
    total = 0
    for path in _listing(root):
        try:
            fd = os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            problem = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise InvalidConfigFile(path, f"cannot be read: {problem}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidConfigFile(path, "not a plain file")
            if info.st_size > MAX_FILE_BYTES:
                raise InvalidConfigFile(path, f"larger than "
                                              f"{MAX_FILE_BYTES // (1024 * 1024)} MiB")
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise InvalidConfigFile(path, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            raise InvalidConfigFile(".", f"the files hold more than "
                                         f"{MAX_TOTAL_BYTES // (1024 * 1024)} MiB")
        files[path] = decode(path, data)
    return files


def _check_replaceable(root: Path) -> bool:
    """Whether `root` exists (then empty or an earlier export); NotAnExport otherwise."""
    try:
        info = root.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise NotAnExport(".", f"{root} is a symbolic link: give the directory itself")
    if not stat.S_ISDIR(info.st_mode):
        raise NotAnExport(".", f"{root} exists and is not a directory")
    if not any(root.iterdir()):
        return True
    try:
        paths = _listing(root)
    except InvalidConfigFile as exc:
        raise NotAnExport(".", f"{root} is not an earlier export ({exc.message}): give an "
                               "empty or new directory") from None
    if MANIFEST not in paths:
        raise NotAnExport(".", f"{root} is not an earlier export (no {MANIFEST}): give an "
                               "empty or new directory")
    return True


def check_export_target(root: Path) -> None:
    """Refuse, before anything is read or audited, a `root` that `write_export` would refuse: one
    whose parent is missing or not a directory, or that is neither absent, empty nor an export."""
    root = root.absolute()
    if not root.parent.is_dir():
        raise NotAnExport(".", f"{root.parent} is not a directory: create it first (the export "
                               f"is written beside it, then renamed into {root.name})")
    _check_replaceable(root)


def write_export(root: Path, files: Mapping[str, str]) -> None:
    """Write `files` as the export at `root`: into a new directory beside it, then renamed into
    its place, so a crash leaves the earlier export whole (or, between the two renames, beside
    it as `.<name>.old-…`). Refuses a `root` that is neither absent, empty nor an export."""
    root = root.absolute()
    exists = _check_replaceable(root)
    token = secrets.token_hex(4)
    staging = root.parent / f".{root.name}.new-{token}"
    old = root.parent / f".{root.name}.old-{token}"
    staging.mkdir()
    try:
        for folder in FOLDERS:
            (staging / folder).mkdir()
        for path, text in files.items():
            check_path(path)
            fd = os.open(staging / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        for folder in FOLDERS:
            fsync_dir(staging / folder)
        fsync_dir(staging)
        if exists and any(root.iterdir()):
            os.rename(root, old)
        os.rename(staging, root)  # replaces an empty directory in one step
        fsync_dir(root.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        if old.exists() and not root.exists():
            os.rename(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)
