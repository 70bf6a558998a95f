"""Process logging: JSON lines (or text) on stderr, with request ids and structured fields; under
systemd each line starts with its syslog priority (`<4>`), so the journal can filter by it.

Owns the formatters and the priority prefix. Callers pass metadata in `extra`; never request
bodies, query-string values, header values, parameter values or results. An exception is written
as its type only (its message may hold data: a caller adds a message it knows to be safe).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any, TextIO

from appliance.timestamps import rfc3339

_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

# Field names that must never carry a value into a log line, whatever a caller passes.
_REDACTED_FIELDS = frozenset(
    {"authorization", "cookie", "set-cookie", "password", "secret", "token", "params", "rows"}
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        out[key] = "<redacted>" if key.lower() in _REDACTED_FIELDS else value
    return out


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened; not its message, which may hold data.
            exc_type = record.exc_info[0]
            entry["exception"] = f"{exc_type.__module__}.{exc_type.__qualname__}"
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{time} {record.levelname.lower():7} {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" exception={record.exc_info[0].__qualname__}"
        return f"{line} {fields}".rstrip()


# syslog(3) priorities (journald's `SyslogLevelPrefix=`): a level between two takes the more
# urgent one (a custom level 35 is a warning).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))
DEBUG_PRIORITY = 7


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: critical 2, error 3, warning 4, info 6, debug 7."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return DEBUG_PRIORITY


class PriorityPrefix(logging.Formatter):
    """`inner`'s line with `<N>` (the record's syslog priority) before it, and before each further
    line if a message spans several: journald reads the prefix of every line it is given."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = self.inner.format(record)
        return prefix + text.replace("\n", "\n" + prefix)


def journald_reads(stream: TextIO, journal_stream: str | None) -> bool:
    """Whether `stream` is connected to the journal: `JOURNAL_STREAM` (`DEVICE:INODE`, set by
    systemd for a service whose output goes to the journal) names the file `stream` writes to.
    A child that inherited the variable but writes elsewhere (a terminal, a pipe) gets no prefix."""
    if not journal_stream:
        return False
    device, sep, inode = journal_stream.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a file (a test's StringIO)
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def configure(fmt: str, level: str, *, journal_stream: str | None = None) -> None:
    """Send every logger's records to stderr in `fmt`; replace any earlier configuration.
    `journal_stream`: the environment's `JOURNAL_STREAM` (see `journald_reads`)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JSONFormatter() if fmt == "json" else TextFormatter()
    if journald_reads(sys.stderr, journal_stream):
        formatter = PriorityPrefix(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log prints the request line with its query string: ours replaces it.
    logging.getLogger("aiohttp.access").disabled = True


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
