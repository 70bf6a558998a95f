"""Where a datasource's secrets go: the destination each secret is sealed for, and the one-time
binding of secrets sealed before destinations were bound.

Owns the rule "a secret reaches only the destination it was entered for": a secret is sealed with
its datasource's destination (kind, host, port, database, user, TLS mode; a REST origin and the
way the secret is presented) as associated data, so changing any of them makes it unopenable.
Never reads, logs or returns a secret value; destinations hold none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from yarl import URL

from appliance.keyring import SealedFieldError, SecretVault
from appliance.kinds.registry import Kind, kind_named
from appliance.store import Store

log = logging.getLogger("appliance.datasources")

SEALED_KIND: Final = "datasource"


def _kind(name: str) -> Kind:
    found = kind_named(name)
    if found is None:  # stored kinds are registered ones (the table's CHECK constraint)
        raise KeyError(name)
    return found


def _origin(base_url: str) -> str:
    url = URL(base_url)
    return f"{url.scheme}://{(url.host or '').lower()}:{url.port}"


def destination(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The destination of a datasource's secrets, as shown in the audit log (no secret in it):
    the kind and its config keys declared `destination` (a change of any of them needs the
    secrets entered again). A URL declared `"origin"` counts by its origin only (a path below
    the same origin reaches the same server), shown as `origin`; a boolean (a weaker way to
    present the secret, allowed or not) as true or false."""
    out: dict[str, Any] = {"kind": kind}
    for spec in _kind(kind).fields:
        if not spec.destination:
            continue
        key, value = spec.name, config.get(spec.name)
        if spec.destination == "origin" and isinstance(value, str):
            key, value = "origin", _origin(value)
        if spec.type == "boolean":
            value = bool(value)
        if value is not None:
            out[key] = value
    return out


def binding(kind: str, config: Mapping[str, Any]) -> bytes:
    """The destination as the bytes a secret is sealed with (canonical JSON)."""
    return json.dumps(destination(kind, config), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def changed_keys(kind: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The config keys whose change moves the destination (empty: same destination)."""
    old, new = destination(kind, before), destination(kind, after)
    # Shown by the key the caller knows (REST's `base_url`), not as `origin`.
    origin = next((spec.name for spec in _kind(kind).fields if spec.destination == "origin"),
                  "origin")
    return sorted(origin if key == "origin" else key
                  for key in set(old) | set(new) if old.get(key) != new.get(key))


async def bind_legacy_secrets(store: Store, vault: SecretVault, *, batch_size: int = 50) -> int:
    """Seal every datasource secret still sealed without a destination (stored before bindings
    existed) with its datasource's current destination. Runs at start; each batch is one
    transaction, so a crash loses nothing and the next start goes on where this one stopped.
    Returns how many fields it bound."""
    bound = 0
    while True:
        async with store.transaction() as tx:
            rows = await tx.fetch_all(
                "SELECT f.record_id, f.field, d.kind, d.config "
                "FROM sealed_fields f JOIN datasources d ON d.id = f.record_id "
                "WHERE f.kind = ? AND f.binding IS NULL ORDER BY f.record_id, f.field LIMIT ?",
                (SEALED_KIND, batch_size))
            if not rows:
                break
            for row in rows:
                record_id, field = str(row["record_id"]), str(row["field"])
                to = binding(str(row["kind"]), json.loads(str(row["config"])))
                try:
                    await vault.rebind(tx, SEALED_KIND, record_id, field, to)
                except SealedFieldError as exc:
                    # It opens for nobody; marked so that this loop moves on. `keys status`
                    # and backups report it, and the admin enters the secret again.
                    log.warning("a datasource secret cannot be bound to its destination",
                                extra={"datasource": record_id, "field": field,
                                       "reason": exc.reason})
                    await tx.execute(
                        "UPDATE sealed_fields SET binding = ? WHERE kind = ? AND record_id = ? "
                        "AND field = ?", (b"", SEALED_KIND, record_id, field))
                    continue
                bound += 1
    if bound:
        log.info("datasource secrets bound to their destinations", extra={"fields": bound})
    return bound
