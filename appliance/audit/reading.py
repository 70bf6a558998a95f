"""Reading the audit log: filtered pages with a keyset cursor, each request's work bounded.

Owns the read path of `audit_log` (`search`), the query's parameters and their validation
(`parse_query`), and the cursor's format. Never uses an OFFSET, never examines more than
`SCAN_BOUND` rows for a filter no index serves, and never writes a parameter's value to a log.

How a page is found: positions (`seq`) are the order. The newest page starts below the head (or
`until`), an ascending one above the start (or `since`); `since`/`until` become positions by a
binary search over `seq` (time follows seq: see docs/audit.md#reading-the-log). The rows are then
read by one of two drivers:
- an index (migration 13: `actor`, `action`) when the actor or an action prefix is given: the
  distinct values that match are found by a loose index scan, and each is read in seq order by
  its index and merged (at most `MAX_KEYS` of them, else the seq driver);
- the primary key otherwise: a window of at most `SCAN_BOUND` positions below (above) the
  cursor.
Other filters are checked on the rows the driver reads; a page ends when `limit` entries match or
the driver's bound is reached, and says how far it looked (`scanned_to`), so a filter that
matches nothing costs one bounded read per request however large the log is.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from appliance.audit.log import OUTCOMES, public_entry
from appliance.errors import BadRequest
from appliance.store import Store

SCAN_BOUND = 50_000  # rows one request may examine for filters no index serves
MAX_KEYS = 32  # distinct actors or actions one index-driven page merges
MIN_WINDOW = 1000  # rows of each of those a request may examine, at least
MAX_LIMIT = 1000
MAX_TEXT = 200  # characters in a filter value
MAX_CURSOR = 400  # characters in a cursor
_TOP = 2**62

PARAMETERS = frozenset({"actor", "action", "outcome", "target", "text", "since", "until",
                        "order", "limit", "cursor", "before", "after"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

Order = Literal["desc", "asc"]


@dataclasses.dataclass(frozen=True)
class Filters:
    """What an entry must match; empty strings match everything."""

    actor: str = ""  # the actor exactly, or its tokens: "admin" matches "admin (token …)"
    action: str = ""  # a prefix of the action ("session." or "query.run")
    outcome: str = ""  # one of OUTCOMES
    target: str = ""  # a prefix of the target ("query:" or "user:bob")
    text: str = ""  # a substring of the target or the details, ASCII case ignored
    since: str = ""  # stored-time text (UTC), inclusive
    until: str = ""  # stored-time text (UTC), inclusive

    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.astuple(self), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Query:
    """One request for a page: filters, direction, size, and where it starts (exclusive)."""

    filters: Filters = Filters()
    order: Order = "desc"
    limit: int = 100
    start: int | None = None  # a position: below it (desc) or above it (asc); None: the end


@dataclasses.dataclass(frozen=True)
class Page:
    entries: list[dict[str, Any]]
    cursor: str | None  # where the next page starts, None when nothing is left that way
    scanned_to: int  # every match between the start and this position is on this page
    examined_from: int  # the first position this request looked at (or would have)
    legacy_next: dict[str, int] | None

    def as_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "cursor": self.cursor, "scanned_to": self.scanned_to,
                "scanned_from": self.examined_from, "next": self.legacy_next}


# -- parsing ---------------------------------------------------------------------------------


def _bad(name: str, message: str, code: str = "bad_query") -> BadRequest:
    return BadRequest(f"{name}: {message}", code=code, field=name)


def _text(query: Mapping[str, str], name: str) -> str:
    value = query.get(name, "")
    if len(value) > MAX_TEXT:
        raise _bad(name, f"at most {MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise _bad(name, "control characters are not allowed")
    return value


def _integer(query: Mapping[str, str], name: str, *, low: int, high: int) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise _bad(name, f"an integer from {low} to {high}")
    return int(raw)


def stored_time(value: datetime.datetime) -> str:
    """A time as the audit log stores it (`log._now`): UTC, microseconds, `+00:00`."""
    return value.astimezone(datetime.UTC).isoformat(timespec="microseconds")


def _time(query: Mapping[str, str], name: str) -> str:
    raw = _text(query, name)
    if not raw:
        return ""
    try:
        parsed = datetime.datetime.fromisoformat(raw)
        if parsed.tzinfo is not None:
            stored_time(parsed + datetime.timedelta(microseconds=1))  # `until` reads past it
            return stored_time(parsed)
    except (ValueError, OverflowError):
        raise _bad(name, "an RFC 3339 time from year 1 to 9999, e.g. 2026-01-31T12:00:00Z"
                   ) from None
    raise _bad(name, "give the time zone (Z or ±hh:mm)")


def parse_query(query: Mapping[str, str], keys: Sequence[str] | None = None) -> Query:
    """The request's query string as a `Query`; `BadRequest` (400) naming the first bad
    parameter: an unknown or repeated name, a value too long or with control characters, a bad
    number, outcome, order or time, a cursor that was edited or made for other filters."""
    names = list(query) if keys is None else list(keys)
    for name in names:
        if name not in PARAMETERS:
            raise _bad(name, "unknown parameter; known: " + ", ".join(sorted(PARAMETERS)))
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise _bad(repeated, "given more than once")
    outcome = _text(query, "outcome")
    if outcome and outcome not in OUTCOMES:
        raise _bad("outcome", "one of " + ", ".join(OUTCOMES))
    filters = Filters(actor=_text(query, "actor"), action=_text(query, "action"),
                      outcome=outcome, target=_text(query, "target"), text=_text(query, "text"),
                      since=_time(query, "since"), until=_time(query, "until"))
    if filters.since and filters.until and filters.since > filters.until:
        raise _bad("since", "must not be after until")
    limit = _integer(query, "limit", low=1, high=MAX_LIMIT) or 100
    order = query.get("order", "") or "desc"
    if order not in ("desc", "asc"):
        raise _bad("order", "desc (newest first, the default) or asc")
    before = _integer(query, "before", low=1, high=_TOP)
    after = _integer(query, "after", low=0, high=_TOP)
    cursor = query.get("cursor", "")
    given = [name for name, value in (("cursor", cursor), ("before", before), ("after", after))
             if value not in ("", None)]
    if len(given) > 1:
        raise _bad(given[1], f"give one of cursor, before, after (not {' and '.join(given)})")
    if before is not None:
        if query.get("order") and order != "desc":
            raise _bad("order", "before reads newest first (desc)")
        return Query(filters, "desc", limit, before)
    if after is not None:
        if query.get("order") and order != "asc":
            raise _bad("order", "after reads forward (asc)")
        return Query(filters, "asc", limit, after)
    if cursor:
        direction, position = decode_cursor(cursor, filters)
        if query.get("order") and order != direction:
            raise _bad("order", "the cursor carries its own order", code="bad_cursor")
        return Query(filters, direction, limit, position)
    return Query(filters, order, limit)  # type: ignore[arg-type]  # checked just above


# -- the cursor ------------------------------------------------------------------------------
# Opaque to clients: base64url of {"v": 1, "o": order, "p": position, "f": the filters'
# fingerprint, "k": a checksum}. It grants nothing `before`/`after` do not (an admin may read any
# position): the checksum refuses an edited cursor and the fingerprint a cursor reused with other
# filters, so a client's mistake is an error rather than a silently different list.


def _checksum(body: Mapping[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"appliance audit cursor\0" + text.encode()).hexdigest()[:16]


def encode_cursor(order: Order, position: int, filters: Filters) -> str:
    body: dict[str, Any] = {"v": 1, "o": order, "p": position, "f": filters.fingerprint()}
    body["k"] = _checksum(body)
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, filters: Filters) -> tuple[Order, int]:
    bad = _bad("cursor", "not a cursor this API gave (pass it back unchanged)", "bad_cursor")
    if len(cursor) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise bad
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(body, dict) or set(body) != {"v", "o", "p", "f", "k"}:
        raise bad
    checksum = body.pop("k")
    if body["v"] != 1 or body["o"] not in ("desc", "asc") or type(body["p"]) is not int \
            or not 0 <= body["p"] <= _TOP or not isinstance(body["f"], str) \
            or checksum != _checksum(body):
        raise bad
    if body["f"] != filters.fingerprint():
        raise _bad("cursor", "this cursor belongs to other filters: start again without it",
                   "cursor_mismatch")
    return body["o"], body["p"]


# -- reading ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Driver:
    """How rows are read in order: by one column's index for each of `keys`, or (column None)
    by position."""

    column: str | None = None
    keys: tuple[str, ...] = ()


def _like(value: str) -> str:
    escaped = value.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _residual(filters: Filters, driver: _Driver) -> tuple[str, list[Any]]:
    """The conditions the driver does not decide, as SQL over `audit_log`'s columns."""
    sql: list[str] = []
    params: list[Any] = []
    if filters.actor and driver.column != "actor":
        sql.append("(actor = ? OR substr(actor, 1, ?) = ?)")
        params += [filters.actor, len(filters.actor) + 2, filters.actor + " ("]
    if filters.action and driver.column != "action":
        sql.append("substr(action, 1, ?) = ?")
        params += [len(filters.action), filters.action]
    if filters.outcome:
        sql.append("outcome = ?")
        params.append(filters.outcome)
    if filters.target:
        sql.append("substr(target, 1, ?) = ?")
        params += [len(filters.target), filters.target]
    if filters.text:
        sql.append("(LOWER(target) LIKE ? ESCAPE '!' OR LOWER(details) LIKE ? ESCAPE '!')")
        params += [_like(filters.text)] * 2
    return " AND ".join(sql) or "1 = 1", params


# The distinct values of an indexed column from `?` on that start with a prefix: one index probe
# each (a loose index scan), in both dialects. PostgreSQL compares these columns bytewise
# (COLLATE "C", migration 13), as SQLite does, so the values with a prefix are contiguous.
_DISTINCT = """
WITH RECURSIVE k(v) AS (
    SELECT MIN({c}) FROM audit_log WHERE {c} >= ?
    UNION ALL
    SELECT (SELECT MIN({c}) FROM audit_log WHERE {c} > k.v) FROM k
    WHERE k.v IS NOT NULL AND substr(k.v, 1, ?) = ?
) SELECT v FROM k WHERE v IS NOT NULL LIMIT ?"""


async def _distinct(store: Store, column: str, prefix: str) -> list[str] | None:
    """The values of `column` that start with `prefix`, or None if more than MAX_KEYS."""
    rows = await store.search(_DISTINCT.format(c=column),
                                 (prefix, len(prefix), prefix, MAX_KEYS + 2))
    values = [str(r["v"]) for r in rows if str(r["v"]).startswith(prefix)]
    return None if len(values) > MAX_KEYS else values


async def _driver(store: Store, filters: Filters) -> _Driver:
    if filters.actor:
        tokens = await _distinct(store, "actor", filters.actor + " (")
        if tokens is not None and len(tokens) < MAX_KEYS:
            return _Driver("actor", (filters.actor, *tokens))
    if filters.action:
        actions = await _distinct(store, "action", filters.action)
        if actions is not None:
            return _Driver("action", tuple(actions))
    return _Driver()


async def _first_at_or_after(store: Store, time: str, low: int, high: int) -> int:
    """The first position in [low, high] whose time is at or after `time` (high + 1 if none),
    by binary search over seq: times follow positions (docs/audit.md#reading-the-log)."""
    while low <= high:
        middle = (low + high) // 2
        row = await store.fetch_one(
            "SELECT seq, time FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,))
        if row is None or int(row["seq"]) > high:
            high = middle - 1  # nothing from middle on (a gap): look below
        elif str(row["time"]) >= time:
            high = middle - 1
        else:
            low = int(row["seq"]) + 1
    return low


async def _bounds(store: Store, filters: Filters) -> tuple[int, int] | None:
    """The positions [first, last] the time range allows; None when the log is empty."""
    # Two subqueries: each is one index probe, where `MIN(seq), MAX(seq)` together would make
    # SQLite read the whole table (250 ms at a million entries; docs/performance.md).
    row = await store.fetch_one("SELECT (SELECT MIN(seq) FROM audit_log) AS lo,"
                                " (SELECT MAX(seq) FROM audit_log) AS hi")
    if row is None or row["lo"] is None:
        return None
    low, high = int(row["lo"]), int(row["hi"])
    first, last = low, high
    if filters.since:
        first = await _first_at_or_after(store, filters.since, low, high)
    if filters.until:
        # the first entry after `until` (the next microsecond on), minus one
        after = stored_time(datetime.datetime.fromisoformat(filters.until)
                            + datetime.timedelta(microseconds=1))
        last = await _first_at_or_after(store, after, low, high) - 1
    return first, last


async def search(store: Store, query: Query) -> Page:
    """One page of the entries matching `query.filters`, newest first (or oldest first), and
    where the next page starts."""
    filters, limit, descending = query.filters, query.limit, query.order == "desc"
    bounds = await _bounds(store, filters)
    if bounds is None:
        return _page([], None, query, 0, 0)
    first, last = bounds
    if descending:
        start = last + 1 if query.start is None else min(query.start, last + 1)
    else:
        start = first - 1 if query.start is None else max(query.start, first - 1)
    if first > last or (descending and start <= first) or (not descending and start >= last):
        return _page([], None, query, start, first if descending else last)
    driver = await _driver(store, filters)
    if driver.column is None:
        rows, frontier = await _read_by_position(store, query, driver, start, first, last)
    else:
        rows, frontier = await _read_by_index(store, query, driver, start, first, last)
    entries = [public_entry(row) for row in rows]
    end = first - 1 if descending else last + 1  # past the last position the range allows
    if len(entries) == limit:
        position = entries[-1]["position"]
        done = position == (first if descending else last)
    else:
        position = frontier
        done = frontier == end
    cursor = None if done else encode_cursor(query.order, position, filters)
    scanned_to = (first if descending else last) if done else position
    return _page(entries, cursor, query, start, scanned_to)


def _page(entries: list[dict[str, Any]], cursor: str | None, query: Query, start: int,
          scanned_to: int) -> Page:
    """`start` is exclusive (the cursor's position); the page says the first one it looked at."""
    legacy = None  # the same place as `before`/`after` (with the same filters)
    if cursor is not None:
        legacy = {"before" if query.order == "desc" else "after": scanned_to}
    return Page(entries, cursor, scanned_to, start - 1 if query.order == "desc" else start + 1,
                legacy)


async def _read_by_position(store: Store, query: Query, driver: _Driver, start: int,
                            first: int, last: int) -> tuple[list[dict[str, Any]], int]:
    """Rows by seq within SCAN_BOUND positions of `start`: (matches, the frontier: the
    position past the last one examined)."""
    where, params = _residual(query.filters, driver)
    if query.order == "desc":
        floor = max(first, start - SCAN_BOUND)
        rows = await store.search(
            f"SELECT * FROM audit_log WHERE seq < ? AND seq >= ? AND {where}"
            " ORDER BY seq DESC LIMIT ?", (start, floor, *params, query.limit))
        return rows, floor - 1 if floor == first else floor
    ceiling = min(last, start + SCAN_BOUND)
    rows = await store.search(
        f"SELECT * FROM audit_log WHERE seq > ? AND seq <= ? AND {where}"
        " ORDER BY seq LIMIT ?", (start, ceiling, *params, query.limit))
    return rows, ceiling + 1 if ceiling == last else ceiling


async def _read_by_index(store: Store, query: Query, driver: _Driver, start: int, first: int,
                         last: int) -> tuple[list[dict[str, Any]], int]:
    """Rows of each key by its index, at most SCAN_BOUND examined in all, merged by seq.

    Each key's read examines at most its share of SCAN_BOUND rows after `start` (the window,
    whose edge an index-only read finds first when other filters may skip rows) and knows every
    match above (below, ascending) its frontier: its last row on a full page, else the window's
    edge, else the range's end. The merged page holds the rows above the highest of those
    frontiers (below the lowest, ascending), which every key has covered."""
    descending = query.order == "desc"
    column = driver.column
    assert column is not None
    where, params = _residual(query.filters, driver)
    window = max(MIN_WINDOW, SCAN_BOUND // max(1, len(driver.keys)))
    order, edge_of, past, within = ("DESC", "MIN", "<", ">=") if descending else \
        ("ASC", "MAX", ">", "<=")
    end = first - 1 if descending else last + 1
    bound = first if descending else last
    found: list[dict[str, Any]] = []
    frontiers: list[int] = []
    for key in driver.keys:
        edge, frontier = bound, end  # without other filters, every row read is a match
        if params:
            counted = await store.search(
                f"SELECT {edge_of}(seq) AS edge, COUNT(*) AS n FROM (SELECT seq FROM audit_log"
                f" WHERE {column} = ? AND seq {past} ? AND seq {within} ? ORDER BY seq {order}"
                " LIMIT ?) AS w", (key, start, bound, window))
            row = counted[0] if counted else None
            if row is not None and int(row["n"]) == window:
                edge = frontier = int(row["edge"])
        rows = await store.search(
            f"SELECT * FROM audit_log WHERE {column} = ? AND seq {past} ? AND seq {within} ?"
            f" AND {where} ORDER BY seq {order} LIMIT ?",
            (key, start, edge, *params, query.limit))
        found += rows
        frontiers.append(int(rows[-1]["seq"]) if len(rows) == query.limit else frontier)
    if descending:
        frontier = max(frontiers, default=end)
        kept = sorted((r for r in found if int(r["seq"]) >= frontier),
                      key=lambda r: int(r["seq"]), reverse=True)
    else:
        frontier = min(frontiers, default=end)
        kept = sorted((r for r in found if int(r["seq"]) <= frontier), key=lambda r: int(r["seq"]))
    return kept[:query.limit], frontier
