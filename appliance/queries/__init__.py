"""Stored queries: their records, the compiled-query cache, and running them. The public face.

Nothing here imports the HTTP layer. Never logs, stores or caches a parameter value or a result.
"""

from appliance.queries.run import Run, Runner
from appliance.queries.service import CompiledQuery, QueryNotFound, QueryService

__all__ = ["CompiledQuery", "QueryNotFound", "QueryService", "Run", "Runner"]
