"""The secret type: a value that cannot be printed by accident.

Owns the wrapper only. Never logs, prints or serialises the wrapped value;
`reveal()` is the one way out.
"""

from __future__ import annotations

import hmac
from typing import Generic, TypeVar

T = TypeVar("T", str, bytes)


class Secret(Generic[T]):
    """Holds a sensitive value. `repr`, `str` and `format` all give `<secret>`."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The wrapped value, for the moment of use only."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "<secret>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, str):
            a = a.encode()
        if isinstance(b, str):
            b = b.encode()
        return hmac.compare_digest(a, b)

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> object:
        raise TypeError("a Secret cannot be pickled")

    def __bool__(self) -> bool:
        return bool(self._value)
