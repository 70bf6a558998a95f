"""A MySQL/MariaDB datasource's config: a SQL server's keys (`kinds/sql/config.py`: host, port,
database, user, TLS mode), whether the password may be answered without verified TLS, and whether
runs may write.

Owns the schema of these keys (the console's form and the API read it). Never holds a secret
value: the password is a secret field, named only.
"""

from __future__ import annotations

from typing import Final

from appliance.kinds.schema import Field
from appliance.kinds.sql.config import SECRETS, server_fields

FIELDS: Final = (
    *server_fields(port=3306),
    # Every MySQL password method can be replayed or cracked by whoever stands in the middle of an
    # unverified connection: answered without verified TLS only when allowed.
    Field("allow_password_without_verified_tls",
          "Allow the password without verified TLS", "boolean", default=False,
          destination=True,
          help="Only used when TLS is not verify-full: mysql_native_password's answer can be "
               "cracked offline and any answer relayed by whoever sits in between."),
    Field("read_only", "Read only", "boolean", default=True,
          help="Runs start in a read-only transaction (SET SESSION TRANSACTION READ ONLY)."),
)

__all__ = ["FIELDS", "SECRETS"]
