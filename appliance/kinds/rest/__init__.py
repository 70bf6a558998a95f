"""The REST kind: an HTTP API under one base URL (`config`), request templates compiled by
`binding`, and its engine (one aiohttp session per datasource).

Owns the registered `Rest` kind. The engine module is loaded only by `make_engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.kinds.registry import Kind, register
from appliance.kinds.rest import config
from appliance.parameters import ParameterSet

if TYPE_CHECKING:
    from appliance.datasources.engine import Engine, Target
    from appliance.egress import Dialer
    from appliance.kinds.rest.binding import RestTemplate


@register
class Rest(Kind):
    name = "rest"
    title = "REST API"
    fields = config.FIELDS
    secrets = config.SECRETS
    where = "{base_url}"
    body = "json"

    def compile(self, body: Any, parameters: ParameterSet) -> RestTemplate:
        from appliance.kinds.rest.binding import compile_rest  # lazy: at its first compile

        return compile_rest(body, parameters)

    def make_engine(self, target: Target, dialer: Dialer, state_dir: Path | None) -> Engine:
        from appliance.kinds.rest.engine import RestEngine

        return RestEngine(target, dialer)
