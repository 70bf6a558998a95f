"""The tamper-evident audit log: hash-chained, append-only, fail-closed, group-committed.

Public face of the package. Never records secrets, parameter values or results.
"""

from appliance.audit.chain import GENESIS, Verification, entry_hash, verify
from appliance.audit.log import (
    OUTCOMES,
    RUN_ACTION,
    RUN_START_ACTION,
    AuditLog,
    AuditUnavailable,
    Context,
    RunsUnderWay,
    public_entry,
    verify_store,
)
from appliance.audit.redact import REDACTED, redact

__all__ = [
    "GENESIS",
    "OUTCOMES",
    "REDACTED",
    "RUN_ACTION",
    "RUN_START_ACTION",
    "AuditLog",
    "AuditUnavailable",
    "Context",
    "RunsUnderWay",
    "Verification",
    "entry_hash",
    "public_entry",
    "redact",
    "verify",
    "verify_store",
]
