"""Versioned schema migrations for the SQLite store, applied in order at start.

Owns the schema. A migration, once released, is never edited: add a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instance metadata",
        (
            """CREATE TABLE meta (
                   key   TEXT PRIMARY KEY,
                   value TEXT NOT NULL
               ) STRICT""",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version
