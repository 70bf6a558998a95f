"""Versioned schema migrations for the store, applied in order at start.

Owns the schema. A migration, once released, is never edited: add a new one. `postgres` holds a
migration's PostgreSQL statements where they differ from the SQLite ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    postgres: tuple[str, ...] | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instance metadata",
        (
            """CREATE TABLE meta (
                   key   TEXT PRIMARY KEY,
                   value TEXT NOT NULL
               ) STRICT""",
        ),
    ),
    Migration(
        2,
        "keyring: unseal slots, sealed keyring, sealed fields",
        (
            """CREATE TABLE keyring_unseal (
                   slot         INTEGER PRIMARY KEY,
                   state        TEXT NOT NULL CHECK (state IN ('active', 'pending')),
                   source       TEXT NOT NULL,
                   kdf          TEXT NOT NULL,
                   verifier     BLOB NOT NULL,
                   wrapped_root BLOB NOT NULL,
                   created_at   REAL NOT NULL
               ) STRICT""",
            """CREATE TABLE keyring (
                   id            INTEGER PRIMARY KEY CHECK (id = 1),
                   generation    INTEGER NOT NULL,
                   root_verifier BLOB NOT NULL,
                   sealed        BLOB NOT NULL,
                   updated_at    REAL NOT NULL
               ) STRICT""",
            """CREATE TABLE sealed_fields (
                   kind        TEXT NOT NULL,
                   record_id   TEXT NOT NULL,
                   field       TEXT NOT NULL,
                   key_version INTEGER NOT NULL,
                   blob        BLOB NOT NULL,
                   updated_at  REAL NOT NULL,
                   PRIMARY KEY (kind, record_id, field)
               ) STRICT""",
            "CREATE INDEX sealed_fields_key_version ON sealed_fields (key_version)",
        ),
    ),
    Migration(
        3,
        "users, sessions, API tokens, 2FA recovery codes, login throttling, audit log",
        (
            """CREATE TABLE users (
                   id             TEXT PRIMARY KEY,
                   username       TEXT NOT NULL UNIQUE COLLATE NOCASE,
                   role           TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
                   password_hash  TEXT NOT NULL,
                   disabled       INTEGER NOT NULL DEFAULT 0,
                   totp_enabled   INTEGER NOT NULL DEFAULT 0,
                   totp_last_step INTEGER NOT NULL DEFAULT 0,
                   created_at     REAL NOT NULL,
                   updated_at     REAL NOT NULL
               ) STRICT""",
            """CREATE TABLE sessions (
                   id_hash    TEXT PRIMARY KEY,
                   user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                   role       TEXT NOT NULL,
                   mfa_state  TEXT NOT NULL CHECK (mfa_state IN ('done', 'not_required',
                                                                 'enrol')),
                   created_at REAL NOT NULL,
                   last_seen  REAL NOT NULL,
                   expires_at REAL NOT NULL
               ) STRICT""",
            "CREATE INDEX sessions_user ON sessions (user_id)",
            """CREATE TABLE api_tokens (
                   id           TEXT PRIMARY KEY,
                   user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                   name         TEXT NOT NULL,
                   role         TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
                   secret_hash  TEXT NOT NULL,
                   created_at   REAL NOT NULL,
                   expires_at   REAL,
                   revoked_at   REAL,
                   last_used_at REAL
               ) STRICT""",
            "CREATE INDEX api_tokens_user ON api_tokens (user_id)",
            """CREATE TABLE recovery_codes (
                   user_id   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                   code_hash TEXT NOT NULL,
                   used_at   REAL,
                   PRIMARY KEY (user_id, code_hash)
               ) STRICT""",
            """CREATE TABLE login_throttle (
                   key          TEXT PRIMARY KEY,
                   failures     INTEGER NOT NULL,
                   locked_until REAL NOT NULL,
                   updated_at   REAL NOT NULL
               ) STRICT""",
            """CREATE TABLE audit_log (
                   seq        INTEGER PRIMARY KEY,
                   time       TEXT NOT NULL,
                   actor      TEXT NOT NULL,
                   action     TEXT NOT NULL,
                   target     TEXT NOT NULL,
                   outcome    TEXT NOT NULL,
                   client     TEXT NOT NULL,
                   request_id TEXT NOT NULL,
                   details    TEXT NOT NULL,
                   prev_hash  TEXT NOT NULL,
                   hash       TEXT NOT NULL
               ) STRICT""",
            """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        ),
    ),
    Migration(
        4,
        "datasources and stored queries",
        (
            """CREATE TABLE datasources (
                   id         TEXT PRIMARY KEY,
                   name       TEXT NOT NULL UNIQUE COLLATE NOCASE,
                   kind       TEXT NOT NULL CHECK (kind IN ('postgres', 'mongodb', 'rest',
                                                            'sqlite')),
                   config     TEXT NOT NULL,
                   version    INTEGER NOT NULL,
                   created_at REAL NOT NULL,
                   updated_at REAL NOT NULL
               ) STRICT""",
            """CREATE TABLE queries (
                   id            TEXT PRIMARY KEY,
                   name          TEXT NOT NULL UNIQUE COLLATE NOCASE,
                   datasource_id TEXT NOT NULL REFERENCES datasources(id) ON DELETE RESTRICT,
                   body          TEXT NOT NULL,
                   parameters    TEXT NOT NULL,
                   timeout_ms    INTEGER,
                   max_rows      INTEGER,
                   version       INTEGER NOT NULL,
                   created_at    REAL NOT NULL,
                   updated_at    REAL NOT NULL
               ) STRICT""",
            "CREATE INDEX queries_datasource ON queries (datasource_id)",
        ),
    ),
    Migration(
        5,
        "ACME certificates: chain, renewal schedule, backoff and account per directory",
        (
            """CREATE TABLE acme_accounts (
                   directory  TEXT PRIMARY KEY,
                   uri        TEXT,
                   created_at REAL NOT NULL,
                   updated_at REAL NOT NULL
               ) STRICT""",
            """CREATE TABLE acme_certificates (
                   names          TEXT PRIMARY KEY,
                   directory      TEXT NOT NULL,
                   chain_pem      TEXT,
                   not_after      REAL,
                   renew_at       REAL,
                   ari_next_check REAL,
                   failures       INTEGER NOT NULL DEFAULT 0,
                   next_attempt   REAL,
                   last_attempt   REAL,
                   last_error     TEXT,
                   last_success   REAL,
                   orders         INTEGER NOT NULL DEFAULT 0,
                   updated_at     REAL NOT NULL
               ) STRICT""",
        ),
    ),
    Migration(
        6,
        "sealed fields: the binding each was sealed with (a datasource secret's destination)",
        (
            # NULL: sealed before bindings existed. A datasource's such fields are bound to its
            # current destination once, at the next start (datasources.destination).
            "ALTER TABLE sealed_fields ADD COLUMN binding BLOB",
        ),
    ),
    Migration(
        7,
        "API token scopes: api (the HTTP API, as before) or metrics (GET /metrics only)",
        (
            "ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'api'"
            " CHECK (scope IN ('api', 'metrics'))",
        ),
    ),
    Migration(
        9,
        "leases (one holder at a time, freed when not renewed) and HTTP-01 answers for every "
        "instance",
        (
            # A named lease: `holder` may act alone until `expires_at` (epoch seconds); renewed
            # while it works, taken over by another once expired (a holder that died).
            """CREATE TABLE leases (
                   name       TEXT PRIMARY KEY,
                   holder     TEXT NOT NULL,
                   expires_at REAL NOT NULL
               ) STRICT""",
            # An ACME HTTP-01 answer (public: token and account key thumbprint, never a key),
            # written by the ordering instance, read by whichever instance the CA reaches.
            """CREATE TABLE acme_challenges (
                   token             TEXT PRIMARY KEY,
                   key_authorization TEXT NOT NULL,
                   expires_at        REAL NOT NULL
               ) STRICT""",
        ),
        postgres=(
            """CREATE TABLE leases (
                   name       TEXT PRIMARY KEY,
                   holder     TEXT NOT NULL,
                   expires_at DOUBLE PRECISION NOT NULL
               )""",
            """CREATE TABLE acme_challenges (
                   token             TEXT PRIMARY KEY,
                   key_authorization TEXT NOT NULL,
                   expires_at        DOUBLE PRECISION NOT NULL
               )""",
        ),
    ),
    Migration(
        10,
        "instance heartbeats: each serving process, its version and address, and when last seen",
        (
            # One row per running `appliance serve` (appliance.instances), written every
            # server.heartbeat_interval seconds, deleted at a clean stop, pruned after a day.
            """CREATE TABLE instances (
                   id             TEXT PRIMARY KEY,
                   version        TEXT NOT NULL,
                   schema_version INTEGER NOT NULL,
                   hostname       TEXT NOT NULL,
                   address        TEXT NOT NULL,
                   http_address   TEXT,
                   pid            INTEGER NOT NULL,
                   beat_interval  REAL NOT NULL,
                   started_at     REAL NOT NULL,
                   last_seen      REAL NOT NULL
               ) STRICT""",
            "CREATE INDEX instances_last_seen ON instances (last_seen)",
        ),
        postgres=(
            """CREATE TABLE instances (
                   id             TEXT PRIMARY KEY,
                   version        TEXT NOT NULL,
                   schema_version BIGINT NOT NULL,
                   hostname       TEXT NOT NULL,
                   address        TEXT NOT NULL,
                   http_address   TEXT,
                   pid            BIGINT NOT NULL,
                   beat_interval  DOUBLE PRECISION NOT NULL,
                   started_at     DOUBLE PRECISION NOT NULL,
                   last_seen      DOUBLE PRECISION NOT NULL
               )""",
            "CREATE INDEX instances_last_seen ON instances (last_seen)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version
