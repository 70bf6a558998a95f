"""A PostgreSQL datasource's config: where it is (host, port, database, user), its TLS mode, and
whether an MD5 password answer is allowed without verified TLS.

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
    Field("port", "Port", "integer", default=5432, minimum=1, maximum=65535, destination=True),
    Field("database", "Database", required=True, destination=True),
    Field("user", "User", required=True, destination=True),
    Field("tls", "TLS", "choice", default="verify-full", choices=TLS_MODES, destination=True),
    # Weaker password method, answered without verified TLS only when allowed.
    Field("allow_md5", "Allow MD5 passwords without verified TLS", "boolean", default=False,
          destination=True, help="Only used when TLS is not verify-full: an MD5 answer is as "
                                 "good as the password to whoever receives it."),
)
SECRETS: Final = (SecretField("password", "Password"),)
