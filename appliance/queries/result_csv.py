"""A run's result as CSV (RFC 4180): a header row, CRLF line ends, quotes doubled, and each value
written as the JSON result writes it; text that a spreadsheet would run as a formula is defused.

Owns the CSV encoding and the download's file name. Never logs or keeps a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

from appliance.queries.result_json import dumps

MEDIA_TYPE: Final = "text/csv"
# A cell starting with one of these is run as a formula by spreadsheets (OWASP "CSV injection"):
# such text gets a leading apostrophe, which every spreadsheet shows as "text, not a formula".
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
# Text that is a plain number is shown as the number it is, never run: no apostrophe for it
# (a decimal such as "-12.50" comes as text in the JSON result, exactly as stored).
_PLAIN_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NEEDS_QUOTES: Final = re.compile(r'[",\r\n]|^$')
_UNSAFE_IN_NAME: Final = re.compile(r"[^A-Za-z0-9._ -]+")
_DECODE: Final = json.JSONDecoder().decode


def cell(value: Any) -> str:
    """One value as CSV text: null is an empty cell, an empty string a quoted empty cell (`""`),
    true/false and numbers as JSON writes them, arrays and objects as compact JSON, text as it
    is (with a leading `'` when a spreadsheet would read it as a formula)."""
    if value is None:
        return ""
    if isinstance(value, str):
        if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
            value = "'" + value
        return _quoted(value)
    return _quoted(dumps(value))


def _quoted(text: str) -> str:
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def header(columns: Iterable[Any]) -> bytes:
    """The header row: each column's name (a column given as an object by its `name`)."""
    names = [c if isinstance(c, str) else str(c.get("name", "")) if isinstance(c, dict)
             else str(c) for c in columns]
    return (",".join(cell(name) for name in names) + "\r\n").encode()


def rows(encoded: Iterable[bytes]) -> bytes:
    """Rows given as the run encodes them (one JSON array each), as CSV lines. Decoding the JSON
    the run already wrote keeps every value's text exactly the JSON result's."""
    return "".join(",".join(cell(v) for v in _DECODE(line.decode())) + "\r\n"
                   for line in encoded).encode()


def filename(query_name: str) -> str:
    """A file name for `Content-Disposition` that no browser or shell reads as more than one:
    letters, digits, `.`, `_`, `-` and spaces only, no leading dot, at most 100 characters."""
    safe = _UNSAFE_IN_NAME.sub("_", query_name).strip(" ._")[:100].strip(" ._")
    return f"{safe or 'result'}.csv"
