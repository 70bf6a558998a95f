"""Secret scanning benchmark: what the scan adds to a save, as a ratio to compiling the same
query (the save's existing cost), measured in the same run, for SQL text and a REST body of
several sizes; and, when `detect-secrets` is importable (it is not a dependency), its file scan
of the same SQL text. Prints ratios; never asserts.

Run: .venv/bin/python bench/secret_scan.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from appliance.queries.compile import compile_query
from appliance.queries.secret_scan import fingerprint_key, scan_query

KEY = fingerprint_key(os.urandom(32))
LINE = "SELECT a, b, c FROM orders WHERE customer_id = {{ cid }} AND x = 'abcdef' -- note\n"
PARAMS = [{"name": "cid", "type": "integer"}]


def best(work: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def sql_body(size: int) -> str:
    return LINE * max(1, size // len(LINE))


def rest_body(size: int) -> dict[str, Any]:
    items = [{"sku": f"{i:06d}", "note": "ordinary text of an order line", "qty": i}
             for i in range(max(1, size // 60))]
    return {"method": "POST", "path": "/v1/orders/{{ cid }}",
            "headers": {"Accept": "application/json"}, "json": {"items": items}}


def detect_secrets_scan() -> Callable[[str], None] | None:
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.settings import default_settings
    except ImportError:
        return None

    def scan(text: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
            file.write(text)
        try:
            with default_settings():
                SecretsCollection().scan_file(file.name)
        finally:
            os.unlink(file.name)

    return scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    other = detect_secrets_scan()
    print(f"{'body':>14} {'compile ms':>11} {'scan ms':>9} {'scan/compile':>13}"
          + ("  detect-secrets ms  its/ours" if other else ""))
    for size in (1024, 65536, 1_000_000):  # SQL text: at most 1,000,000 characters
        sql = sql_body(size)
        compiled = best(partial(compile_query, "sqlite", sql, PARAMS), args.rounds)
        scanned = best(partial(scan_query, "sql", sql, PARAMS, None, KEY), args.rounds)
        line = f"{'SQL ' + str(round(size / 1024)) + ' KiB':>14} {compiled * 1e3:11.2f} " \
               f"{scanned * 1e3:9.2f} {scanned / compiled:13.2f}"
        if other and size <= 65536:
            theirs = best(partial(other, sql), max(1, args.rounds // 2))
            line += f"  {theirs * 1e3:17.1f}  {theirs / scanned:8.0f}"
        print(line)
        rest = rest_body(size)
        compiled = best(partial(compile_query, "rest", rest, PARAMS), args.rounds)
        scanned = best(partial(scan_query, "json", rest, PARAMS, None, KEY), args.rounds)
        print(f"{'REST ' + str(round(size / 1024)) + ' KiB':>14} {compiled * 1e3:11.2f} "
              f"{scanned * 1e3:9.2f} {scanned / compiled:13.2f}")


if __name__ == "__main__":
    main()
