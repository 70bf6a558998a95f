"""Reading a JSON request body: the one place that turns bad bodies into 400, 413 and 415.

Never logs or echoes the body.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from appliance.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from appliance.http.app_keys import SETTINGS


async def read_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a clear error."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("the request body must be JSON (Content-Type: application/json)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].server.max_body_bytes
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from None
    try:
        data = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        detail = f" at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise BadRequest(f"the request body is not valid JSON{detail}",
                         code="malformed_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="malformed_json")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# JSON between systems is UTF-8 (RFC 8259, section 8.1); NaN and Infinity are not JSON.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
