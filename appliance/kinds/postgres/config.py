"""A PostgreSQL datasource's config: a SQL server's keys (`kinds/sql/config.py`: host, port,
database, user, TLS mode), and whether an MD5 password answer is allowed without verified TLS.

Owns the schema of these keys (the console's form and the API read it). Never holds a secret
value: the password is a secret field, named only.
"""

from __future__ import annotations

from typing import Final

from appliance.kinds.schema import Field
from appliance.kinds.sql.config import SECRETS, server_fields

FIELDS: Final = (
    *server_fields(port=5432),
    # Weaker password method, answered without verified TLS only when allowed.
    Field("allow_md5", "Allow MD5 passwords without verified TLS", "boolean", default=False,
          destination=True, help="Only used when TLS is not verify-full: an MD5 answer is as "
                                 "good as the password to whoever receives it."),
)

__all__ = ["FIELDS", "SECRETS"]
