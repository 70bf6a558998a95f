"""The demo for `serve --dev`: a small SQLite database, a datasource for it and two stored queries,
so a tester sees a working query within a minute.

Owns the demo data and its creation (once; a second start changes nothing). Never runs outside
`--dev`.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from appliance.audit import Context
from appliance.core import Core

log = logging.getLogger("appliance.demo")

DATASOURCE_NAME = "demo"
PRODUCTS = [
    (1, "0001", "Blue mug", 8.5, "2024-01-15"),
    (2, "0042", "Notebook, squared", 4.25, "2024-02-01"),
    (3, "0100", "Fountain pen", 39.0, "2024-03-10"),
    (4, "0777", "Desk lamp", 54.9, "2024-04-22"),
    (5, "1234", "Café au lait bowl", 12.0, "2024-05-05"),
]
QUERIES_TO_CREATE = [
    {
        "name": "demo products under a price",
        "body": "SELECT id, sku, name, price, added FROM products\n"
                "WHERE price <= {{ max_price }}\nORDER BY price",
        "parameters": [{"name": "max_price", "type": "number", "default": 20,
                        "description": "the highest price shown"}],
    },
    {
        "name": "demo products by sku",
        "body": "SELECT id, sku, name, price FROM products WHERE sku IN ({{ skus }}) ORDER BY sku",
        "parameters": [{"name": "skus", "type": "array<string>", "default": ["0001", "0042"],
                        "description": "SKUs stay strings: '0001' is not 1"}],
    },
]


def _create_database(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        return
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, "
                     "name TEXT NOT NULL, price REAL NOT NULL, added TEXT NOT NULL)")
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)", PRODUCTS)
        conn.commit()
    finally:
        conn.close()


async def install(core: Core) -> None:
    """Create the demo database, datasource and queries if the datasource does not exist yet."""
    datasources = core.datasources
    if any(d["name"] == DATASOURCE_NAME for d in await datasources.list()):
        return
    path = Path(core.settings.server.state_dir).absolute() / "demo" / "demo.sqlite"
    _create_database(path)
    context = Context(actor="system (serve --dev)")
    created = await datasources.create(
        {"name": DATASOURCE_NAME, "kind": "sqlite", "config": {"path": str(path)}}, context)
    for query in QUERIES_TO_CREATE:
        await core.queries.create({**query, "datasource_id": created["id"]}, context)
    log.info("demo datasource and queries created", extra={"datasource": created["id"]})
