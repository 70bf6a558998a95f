"""The state directory: where the store, the instance secret and TLS material live.

Owns its creation (0700), the 0600 mode of files written into it, and the refusal to use a
directory that others can read. Never writes a secret anywhere but a 0600 file created here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from appliance.errors import StateDirError

DIR_MODE = 0o700
FILE_MODE = 0o600
INSTANCE_SECRET_FILE = "instance.key"  # noqa: S105 - a file name, not a secret
STORE_FILE = "appliance.db"
TLS_DIR = "tls"


def ensure(path: Path) -> Path:
    """Create the directory (and parents) 0700 if missing; then `check` it."""
    path = path.absolute()
    if not path.exists():
        try:
            path.mkdir(mode=DIR_MODE, parents=True)
        except OSError as exc:
            raise StateDirError(f"cannot create state directory {path}: {exc.strerror}") from None
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
    check(path)
    return path


def check(path: Path) -> None:
    """Refuse a state directory that is missing, not a directory, or group/world accessible."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise StateDirError(
            f"state directory {path} does not exist; run `appliance init --state-dir {path}`"
        ) from None
    if stat.S_ISLNK(info.st_mode):
        info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state directory {path} is not a directory")
    if info.st_mode & 0o077:
        raise StateDirError(
            f"state directory {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 700 {path}`"
        )
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"state directory {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.geteuid()})"
        )


def ensure_subdir(state_dir: Path, name: str) -> Path:
    sub = state_dir / name
    if not sub.exists():
        sub.mkdir(mode=DIR_MODE)
        os.chmod(sub, DIR_MODE)
    return sub


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write `data` to a 0600 file atomically (temp file, fsync, rename).

    With `exclusive`, fail with FileExistsError instead of replacing an existing file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path exists: never overwrites
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_private(path: Path, *, others_may_read: bool = False) -> bytes:
    """The bytes of a secret file an operator wrote (an instance secret, a store password), or
    `ValueError` saying in words what is wrong with it: missing, unreadable, or readable by group
    or others (unless `others_may_read`: systemd's credential files are the service's own)."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror})") from None
    if stat.S_IMODE(info.st_mode) & 0o077 and not others_may_read:
        raise ValueError(f"{path} is readable by group or others; run `chmod 600 {path}`")
    return data


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_mode_problems(state_dir: Path) -> list[str]:
    """Files or directories under the state dir that others could read."""
    problems = []
    for root, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            full = Path(root, name)
            mode = stat.S_IMODE(full.lstat().st_mode)
            if mode & 0o077:
                problems.append(f"{full} has mode {mode:04o}")
    return problems
