"""A REST datasource's config: its base URL (scheme, host and port come only from here), how the
credential is presented (`auth`), and whether redirects are followed.

Owns the schema of these keys and their checks (the console's form and the API read it). Never
holds a secret value: the token, password and API key are secret fields, named only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from appliance.kinds.schema import Field, InvalidDatasource, SecretField

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]{1,64}")
_BASE_URL: Final = "config.base_url"
FRAMING_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding", "connection",
                                    "cookie"})


def check_base_url(value: Any, state_dir: Path | None = None) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidDatasource("config.base_url must be an http(s) URL", field=_BASE_URL)
    from yarl import URL  # lazy: a CLI verb that checks no REST datasource never loads yarl

    try:
        url = URL(value)
    except ValueError:
        raise InvalidDatasource("config.base_url must be an http(s) URL", field=_BASE_URL) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidDatasource("config.base_url must be an absolute http or https URL",
                                field=_BASE_URL)
    if url.user is not None or url.password is not None:
        raise InvalidDatasource("config.base_url cannot hold credentials: use 'auth' and secrets",
                                field=_BASE_URL)
    if url.query_string or url.fragment:
        raise InvalidDatasource("config.base_url cannot have a query or a fragment",
                                field=_BASE_URL)
    return str(url).rstrip("/")


def check_header_name(value: str, state_dir: Path | None = None) -> str:
    if value.lower() in FRAMING_HEADERS:
        raise InvalidDatasource("config.header_name cannot be a framing header",
                                field="config.header_name")
    return value


_BASIC_USER_RE: Final = re.compile(r"[^\x00-\x1f\x7f:]{1,128}")


FIELDS: Final = (
    Field("base_url", "Base URL", "url", required=True, check=check_base_url,
          placeholder="https://api.example.com/v1", destination="origin"),
    Field("auth", "Authentication", "choice", default="none", destination=True, choices=(
        ("none", "none"), ("bearer", "bearer token"), ("basic", "basic (user and password)"),
        ("header", "API key in a header"))),
    # RFC 7617: a user-id cannot contain a colon (the server splits the pair at the first one).
    Field("username", "Username", when={"auth": "basic"}, required=True, destination=True,
          pattern=_BASIC_USER_RE),
    Field("header_name", "Header name", when={"auth": "header"}, required=True,
          pattern=_TOKEN_RE, check=check_header_name, placeholder="X-Api-Key",
          destination=True),
    Field("follow_redirects", "Follow redirects", "boolean", default=False),
    Field("max_redirects", "At most this many redirects", "integer", default=5, minimum=0,
          maximum=20),
)
# The credential each auth mode presents, required when that mode is chosen.
SECRETS: Final = (
    SecretField("token", "Bearer token", when={"auth": "bearer"}, required=True),
    SecretField("password", "Password", when={"auth": "basic"}, required=True),
    SecretField("api_key", "API key", when={"auth": "header"}, required=True),
)
