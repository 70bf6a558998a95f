"""The tamper-evident audit log: chained by an HMAC under the keyring's audit key, append-only,
fail-closed, group-committed, verified in the background.

Public face of the package. Never records secrets, parameter values or results.
"""

from appliance.audit.chain import (
    CHECKPOINT_ACTION,
    GENESIS,
    KEYED_ACTION,
    VERIFIED_ACTION,
    Start,
    Verification,
    entry_hash,
    verify,
)
from appliance.audit.keys import FixedMacKeys, MacKeys
from appliance.audit.log import (
    OUTCOMES,
    RUN_ACTION,
    RUN_START_ACTION,
    AuditLog,
    AuditUnavailable,
    Context,
    RunsUnderWay,
    public_entry,
)
from appliance.audit.redact import REDACTED, redact
from appliance.audit.verification import BackgroundVerifier, chain_status, verify_store

__all__ = [
    "CHECKPOINT_ACTION",
    "GENESIS",
    "KEYED_ACTION",
    "OUTCOMES",
    "REDACTED",
    "RUN_ACTION",
    "RUN_START_ACTION",
    "VERIFIED_ACTION",
    "AuditLog",
    "AuditUnavailable",
    "BackgroundVerifier",
    "Context",
    "FixedMacKeys",
    "MacKeys",
    "RunsUnderWay",
    "Start",
    "Verification",
    "chain_status",
    "entry_hash",
    "public_entry",
    "redact",
    "verify",
    "verify_store",
]
