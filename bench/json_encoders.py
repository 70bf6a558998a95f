"""JSON encoders for what the appliance encodes on every run: CPython's private C encoder made once
(`appliance.compact_json`, the baseline), orjson and msgspec (when installed), on an audit entry's
details (sorted keys), the hash chain's values and result rows.

Usage: .venv/bin/python bench/json_encoders.py  (msgspec is not a dependency: `pip install
msgspec` to measure it too). Prints nanoseconds per call (best of 5) and each ratio against the
baseline; never asserts.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from appliance import compact_json

DETAILS = {"datasource": "pg-main", "duration_ms": 1.234, "mode": "json", "row_count": 1,
           "truncated": False}
CHAIN = [123456, "2026-01-31T12:00:00.123456+00:00", "viewer", "query.run", "query:q1", "ok",
         "127.0.0.1", "req-abcdef0123456789",
         '{"datasource":"pg-main","duration_ms":1.234,"mode":"json","row_count":1,'
         '"truncated":false}', "a" * 64]
ROW3 = [1, "name-1", 3.5]
ROW10 = [1, "name-1", 3.5, None, True, "x" * 40, 1234567, "2026-01-01", 2.25, "abc"]


def best(fn: Callable[[], Any], number: int = 100_000) -> float:
    """Nanoseconds per call, the best of 5 repeats."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def main() -> None:
    sorted_c = compact_json.encoder(sort_keys=True)
    plain_c = compact_json.encoder()
    rows_c = compact_json.encoder(allow_nan=False, default=str)
    sort = orjson.OPT_SORT_KEYS
    cases: dict[str, dict[str, Callable[[], Any]]] = {
        "audit details (5 keys, sorted) -> str": {
            "c_make_encoder": lambda: sorted_c(DETAILS),
            "orjson": lambda: orjson.dumps(DETAILS, option=sort).decode()},
        "hash chain values (10) -> bytes": {
            "c_make_encoder": lambda: plain_c(CHAIN).encode(),
            "orjson": lambda: orjson.dumps(CHAIN)},
        "result row (3 values) -> bytes": {
            "c_make_encoder": lambda: rows_c(ROW3).encode(),
            "orjson": lambda: orjson.dumps(ROW3)},
        "result row (10 values) -> bytes": {
            "c_make_encoder": lambda: rows_c(ROW10).encode(),
            "orjson": lambda: orjson.dumps(ROW10)},
    }
    try:
        import msgspec
    except ImportError:
        print("(msgspec not installed: not measured)")
    else:
        encode = msgspec.json.Encoder().encode
        encode_sorted = msgspec.json.Encoder(order="sorted").encode
        names = list(cases)
        cases[names[0]]["msgspec"] = lambda: encode_sorted(DETAILS).decode()
        cases[names[1]]["msgspec"] = lambda: encode(CHAIN)
        cases[names[2]]["msgspec"] = lambda: encode(ROW3)
        cases[names[3]]["msgspec"] = lambda: encode(ROW10)
    print("| case | encoder | ns per call | against c_make_encoder |")
    print("|---|---|---|---|")
    for case, encoders in cases.items():
        base = best(encoders["c_make_encoder"])
        for name, fn in encoders.items():
            took = base if name == "c_make_encoder" else best(fn)
            print(f"| {case} | {name} | {took:.0f} | {took / base:.2f} |")


if __name__ == "__main__":
    main()
