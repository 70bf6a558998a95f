"""Redaction of audit details: values under secret-looking keys never reach the log.

Owns the rule for what counts as secret in an audit entry's details. Never returns a secret value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from appliance.secret import Secret

REDACTED = "<redacted>"

# A key whose lower-cased name contains one of these has its value replaced.
SECRET_KEY_PARTS = (
    "password", "passphrase", "secret", "token", "totp", "otp", "recovery", "api_key",
    "apikey", "authorization", "cookie", "session_id", "private_key", "credential", "hmac",
    "params", "rows", "result",
)

_MAX_DEPTH = 8
_MAX_STRING = 2000


_SECRET_KEY_RE = re.compile("|".join(map(re.escape, SECRET_KEY_PARTS)))
_PLAIN = (type(None), bool, int, float)  # exact types: kept as they are


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    return _SECRET_KEY_RE.search(key.lower()) is not None


def redact(value: Any, _depth: int = 0) -> Any:
    """A JSON-safe copy of `value` with secret-looking keys and `Secret`s replaced.

    Every audit entry's details pass through here, a query run's too (a handful of flat keys):
    plain values and short strings are kept without further checks, so that costs about a
    microsecond (docs/performance.md, "The audit entry's JSON").
    """
    if _depth > _MAX_DEPTH:
        return "<too deep>"
    if type(value) is dict or (not isinstance(value, Secret) and isinstance(value, Mapping)):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if type(key) is str else str(key)
            kind = type(item)
            if is_secret_key(name):
                out[name] = REDACTED
            elif kind in _PLAIN or (kind is str and len(item) <= _MAX_STRING):
                out[name] = item
            else:
                out[name] = redact(item, _depth + 1)
        return out
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [redact(item, _depth + 1) for item in items]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = str(value)
    return text if len(text) <= _MAX_STRING else text[:_MAX_STRING] + "…"
