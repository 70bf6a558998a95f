"""Process logging: JSON lines (or text) on stderr, with request ids and structured fields.

Owns the formatters. Callers pass metadata in `extra`; never request bodies, query-string
values, header values, parameter values or results.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

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
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
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


def configure(fmt: str, level: str) -> None:
    """Send every logger's records to stderr in `fmt`; replace any earlier configuration."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log prints the request line with its query string: ours replaces it.
    logging.getLogger("aiohttp.access").disabled = True


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
