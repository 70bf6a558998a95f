"""What a SQL server datasource's config is, for every kind that connects to one (postgres,
mysql): where it is (host, port, database, user), its TLS mode, and its password.

Owns the schema of these shared keys; each kind adds its own (its default port, what weakens its
password's protection, whether runs may write) in its `config.py`. Never holds a secret value: the
password is a secret field, named only.
"""

from __future__ import annotations

from typing import Final

from appliance.kinds.schema import HOST_RE, Field, SecretField

TLS_MODES: Final = (("verify-full", "verify-full"), ("require", "require"),
                    ("disable", "disable"))
SECRETS: Final = (SecretField("password", "Password"),)


def server_fields(port: int) -> tuple[Field, ...]:
    """The keys saying where a SQL server is and how it is reached, its usual `port` the
    default. All of them are the destination the password is sealed for."""
    return (
        Field("host", "Host", required=True, pattern=HOST_RE, destination=True),
        Field("port", "Port", "integer", default=port, minimum=1, maximum=65535,
              destination=True),
        Field("database", "Database", required=True, destination=True),
        Field("user", "User", required=True, destination=True),
        Field("tls", "TLS", "choice", default="verify-full", choices=TLS_MODES,
              destination=True),
    )


__all__ = ["SECRETS", "TLS_MODES", "server_fields"]
