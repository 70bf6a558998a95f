"""A MySQL/MariaDB datasource's config: where it is (host, port, database, user), its TLS mode,
whether the password may be answered without verified TLS, and whether runs may write.

Owns the schema of these keys (the console's form and the API read it). Never holds a secret
value: the password is a secret field, named only.
"""

from __future__ import annotations

from typing import Final

from appliance.kinds.schema import HOST_RE, Field, SecretField

TLS_MODES: Final = (("verify-full", "verify-full"), ("require", "require"),
                    ("disable", "disable"))

FIELDS: Final = (
    Field("host", "Host", required=True, pattern=HOST_RE, destination=True),
    Field("port", "Port", "integer", default=3306, minimum=1, maximum=65535, destination=True),
    Field("database", "Database", required=True, destination=True),
    Field("user", "User", required=True, destination=True),
    Field("tls", "TLS", "choice", default="verify-full", choices=TLS_MODES, destination=True),
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
SECRETS: Final = (SecretField("password", "Password"),)
