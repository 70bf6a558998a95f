"""Timestamps as the API writes and reads them: RFC 3339 in UTC, milliseconds, `Z`
(`2026-12-03T12:00:00.123Z`), one format for every route.

Owns that format and its parser. A leaf module (imports nothing of the appliance). Never changes
what the store holds: times are kept as epoch seconds (or the audit log's hashed text) and turned
into this text only on the way out.
"""

from __future__ import annotations

import datetime as dt
import math

# The one format: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
_FORMAT = "%Y-%m-%dT%H:%M:%S"


def rfc3339(value: float | dt.datetime | None) -> str | None:
    """`value` (epoch seconds, or an aware datetime) as `2026-12-03T12:00:00.123Z`; None as None.
    A naive datetime is refused: the API never guesses a time zone."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("a naive datetime has no time zone to write")
        moment = value.astimezone(dt.UTC)
    else:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError("a timestamp must be a finite number of seconds")
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return f"{moment.strftime(_FORMAT)}.{moment.microsecond // 1000:03d}Z"


def parse(text: str) -> float:
    """An RFC 3339 date-time (`T` or a space between date and time, `Z` or an offset; a time zone
    is required) as epoch seconds. Raises ValueError with what is wrong."""
    if not isinstance(text, str) or not 20 <= len(text) <= 40:
        raise ValueError("expected an RFC 3339 time such as 2026-12-03T12:00:00Z")
    normal = text.strip()
    if normal[-1:] in ("Z", "z"):
        normal = normal[:-1] + "+00:00"
    if len(normal) < 11 or normal[10] not in "Tt ":
        raise ValueError("expected an RFC 3339 time such as 2026-12-03T12:00:00Z")
    try:
        moment = dt.datetime.fromisoformat(normal[:10] + "T" + normal[11:])
    except ValueError:
        raise ValueError("expected an RFC 3339 time such as 2026-12-03T12:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError("an RFC 3339 time needs a time zone: Z or an offset such as +01:00")
    return moment.timestamp()
