"""The configuration store: one small async interface; SQLite as the embedded default, PostgreSQL
as the shared one (`[store] url`), opened from the settings by `open_store`.

Knows nothing of HTTP. Never stores a query's parameter values or results.
"""

from appliance.store.base import Row, Step, Store, Transaction
from appliance.store.opener import open_store
from appliance.store.sqlite import SQLiteStore, open_sqlite_store

__all__ = ["Row", "SQLiteStore", "Step", "Store", "Transaction", "open_sqlite_store",
           "open_store"]
