"""Result values as JSON: how driver types (decimals, dates, UUIDs, bytes, BSON types, composite
records) are written in a run's response.

Owns the encoding only. Never logs or keeps a value.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import math
import uuid
from collections.abc import Mapping
from typing import Any, Final

from appliance import compact_json

_ENCODE: Final = compact_json.encoder(allow_nan=False, default=lambda v: json_default(v))


def json_default(value: Any) -> Any:
    """A JSON form for a value json cannot write itself.

    Decimals as strings (exact), dates/times ISO-8601, intervals as exact ISO-8601 durations in
    seconds (`iso_duration`), bytes base64, UUIDs and addresses as text, records and tuples as
    arrays, sets as sorted arrays; anything else as its `str`.
    """
    if type(value).__name__ == "Decimal" and type(value).__module__ in ("decimal", "_decimal"):
        return str(value)  # `decimal` is imported only by the drivers that return one
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address
                  | ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Interface
                  | ipaddress.IPv6Interface):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "items") and hasattr(value, "keys") and not isinstance(value, str):
        return list(value)  # asyncpg Record (composite types)
    if isinstance(value, tuple) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        return list(value)
    return str(value)


_MICROSECOND: Final = dt.timedelta(microseconds=1)


def iso_duration(value: dt.timedelta) -> str:
    """`PT<seconds>S` with every digit: whole seconds, then up to six decimals without trailing
    zeros (`PT-3020399S`, `PT0.000001S`, `PT86399999999999.999999S`); negative as `PT-…S`.
    Integer arithmetic on microseconds: a float (`total_seconds()`) keeps only 15-17 digits."""
    return iso_seconds(value // _MICROSECOND)


def iso_seconds(micros: int, *, months: int = 0) -> str:
    """A duration of `months` (calendar months: PostgreSQL's intervals keep them apart, a month
    is not a number of seconds) and `micros` microseconds: `P<months>M` when there are months,
    then `T<seconds>S` as `iso_duration` writes it (`P1M`, `P-14MT86400.5S`, `PT0S`)."""
    whole, fraction = divmod(abs(micros), 1_000_000)
    digits = f"{whole}.{fraction:06d}".rstrip("0") if fraction else str(whole)
    seconds = f"T{'-' if micros < 0 else ''}{digits}S"
    if not months:
        return "P" + seconds
    return f"P{months}M" + (seconds if micros else "")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    """Compact JSON; non-finite floats become the strings "NaN", "Infinity", "-Infinity"."""
    try:
        return _ENCODE(value)
    except ValueError:
        return _ENCODE(_finite(_plain(value)))


def _plain(value: Any) -> Any:
    """Containers turned into lists/dicts all the way down (so `_finite` can see every float)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    converted = json_default(value)
    return _plain(converted) if isinstance(converted, list | dict) else converted
