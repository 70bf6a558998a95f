"""`appliance doctor`: one line per check, each with what to do when it fails (or warns).

Only reads: it never creates, migrates or repairs anything. Never prints a password: the store is
named by its kind and location only.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__, state_dir
from appliance.audit.sinks import probe
from appliance.cli import unit_credential
from appliance.cli.common import add_json_option, add_state_options, emit_json, load_settings
from appliance.errors import ApplianceError, ConfigError, StoreError
from appliance.instances import Instance, list_instances
from appliance.keyring.errors import WrongInstanceSecret
from appliance.keyring.sources import (
    MIN_SECRET_BYTES,
    SOURCE_CREDENTIAL,
    InstanceSecret,
    secret_file,
)
from appliance.keyring.sources import resolve as resolve_secret
from appliance.keyring.unseal import open_root, read_slots
from appliance.queries.secret_findings import StoredFinding, findings_in_store
from appliance.secret import Secret
from appliance.settings import Endpoint, Settings
from appliance.store.migrations import LATEST
from appliance.store.opener import describe, inspected_store, sqlite_path
from appliance.tls.certificates import load_pair


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False  # passes, but deserves a look: printed as WARN, with its fix


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check settings, state, store, instances, TLS material and ports",
        description="Check the settings, the state directory's modes, the store and its "
                    "migrations, the other instances alive on the store (from their "
                    "heartbeats), whether each audit sink can be opened, the TLS material, "
                    "the listen ports (one an appliance on this host listens on is ok) and, "
                    "when the systemd unit is installed, that the credential it hands the "
                    "service opens this store's keyring. Prints one "
                    "line per check (ok, WARN or FAIL), or --json; exits 1 if any fails.",
    )
    add_state_options(parser)
    add_json_option(parser)
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="the system root where the installed systemd unit is looked for "
                             "(default /)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        _report([Check("settings", False, exc.message,
                       "fix the named key, then run doctor again")], args.json)
        return 2
    checks = [Check("settings", True,
                    f"valid ({settings.config_file or 'defaults and environment'})")]
    checks += _guarded("state dir", lambda: _state_dir(settings))
    checks += _guarded("instance secret", lambda: _instance_secret(settings))
    instances: list[Instance] = []
    try:
        store_checks, instances = _store(settings)
    except ApplianceError as exc:
        store_checks = [Check("store", False, exc.message)]
    checks += store_checks
    if all(check.ok for check in store_checks):
        checks += _secrets_in_queries(settings)
    checks += _audit_sinks(settings)
    checks += _guarded("tls", lambda: _tls(settings))
    checks += _guarded("ports", lambda: _ports(settings, instances))
    checks += _guarded("unit credential", lambda: _unit_credential(settings, args.root))
    _report(checks, args.json)
    return 0 if all(c.ok for c in checks) else 1


def _report(checks: list[Check], as_json: bool) -> None:
    if as_json:
        emit_json({"ok": all(c.ok for c in checks), "checks": [
            {"name": c.name, "status": _label(c).strip().lower(), "detail": c.detail,
             "fix": c.fix if (not c.ok or c.warn) and c.fix else None} for c in checks]})
        return
    for result in checks:
        _print(result)


def _guarded(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    try:
        return check()
    except ApplianceError as exc:
        return [Check(name, False, exc.message)]


def _label(check: Check) -> str:
    return "FAIL" if not check.ok else "WARN" if check.warn else "ok  "


def _print(check: Check) -> None:
    line = f"{_label(check)}  {check.name}: {check.detail}"
    if (not check.ok or check.warn) and check.fix and check.fix not in check.detail:
        line += f" -> {check.fix}"
    print(line)


def _state_dir(settings: Settings) -> list[Check]:
    path = settings.server.state_dir.absolute()
    try:
        state_dir.check(path)
    except ApplianceError as exc:
        return [Check("state directory", False, exc.message.partition("; run ")[0],
                      f"run `appliance init --state-dir {path}`" if not path.exists() else
                      f"chmod 700 {path}")]
    problems = state_dir.file_mode_problems(path)
    if problems:
        return [Check("state directory", False, "; ".join(problems[:3]),
                      f"chmod -R go= {path}")]
    return [Check("state directory", True, f"{path} (0700, files 0600)")]


def _instance_secret(settings: Settings) -> list[Check]:
    path = settings.server.state_dir.absolute() / state_dir.INSTANCE_SECRET_FILE
    if not path.exists():
        return [Check("instance secret", False, f"{path} is missing",
                      f"run `appliance init --state-dir {path.parent}` (or restore the file "
                      "from your backup)")]
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        return [Check("instance secret", False, f"{path} is readable by others",
                      f"chmod 600 {path}")]
    if info.st_size != 32:
        return [Check("instance secret", False, f"{path} is {info.st_size} bytes, not 32",
                      "restore the file from your backup")]
    return [Check("instance secret", True, f"{path} (0600)")]


def _store(settings: Settings) -> tuple[list[Check], list[Instance]]:
    """The store (kind, location, schema version) and the instances its heartbeats show."""
    where = describe(settings)
    sqlite_file = sqlite_path(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        state = settings.server.state_dir.absolute()
        return [Check("store", False, f"{where} is missing",
                      f"run `appliance init --state-dir {state}`")], []

    async def read() -> tuple[int, list[Instance]]:
        async with inspected_store(settings) as store:
            current = await store.schema_version()
            try:
                instances = await list_instances(store)
            except StoreError:  # a schema from before heartbeats: no instance has recorded one
                instances = []
            return current, instances

    try:
        current, instances = asyncio.run(read())
    except StoreError as exc:
        return [Check("store", False, exc.message, "check [store] in the settings")], []
    if current < LATEST:
        store = Check("store", False, f"{where} is at schema version {current}, this appliance's "
                      f"latest is {LATEST}", "start `appliance serve` once to migrate")
    elif current > LATEST:
        store = Check("store", False, f"{where} is at schema version {current}, newer than this "
                      f"appliance's latest ({LATEST})",
                      f"run doctor of the appliance version that migrated it (this is "
                      f"{__version__})")
    else:
        store = Check("store", True, f"{where} opens, schema version {current} (latest)")
    return [store, *_instance_checks(instances, time.time())], instances


def _secrets_in_queries(settings: Settings) -> list[Check]:
    """A WARN per credential written in a stored query (its query and place, never the text),
    unless an admin allowed it; needs the instance secret to compute the fingerprints."""
    async def read() -> list[StoredFinding] | None:
        async with inspected_store(settings) as store:
            return await findings_in_store(store, resolve_secret(settings))

    try:
        found = asyncio.run(read())
    except ApplianceError as exc:
        return [Check("secrets in queries", True, f"not scanned: {exc.message}", warn=True,
                      fix="run doctor where the instance secret is readable")]
    open_findings = [f for f in found or () if not f.allowed]
    allowed = len(found or ()) - len(open_findings)
    if not open_findings:
        return [Check("secrets in queries", True, f"no credential found in stored queries"
                      f"{f' ({allowed} allowed as false positives)' if allowed else ''}")]
    fix = ("move it into the datasource's secrets and save the query again; an admin may "
           "allow a false positive: GET /api/v1/queries/secret-findings")
    return [Check("secrets in queries", True, f"query '{f.query_name}' {f.finding.describe()}",
                  fix, warn=True) for f in open_findings]


def _audit_sinks(settings: Settings) -> list[Check]:
    """Whether each of `[audit] sinks` could be opened now (opening and creating nothing): a
    required one that cannot stops `serve` and every verb that writes entries."""
    out = []
    for spec in settings.audit.sinks:
        problem = probe(spec)
        name = f"audit sink {spec.name}"
        if problem is None:
            kind = "required" if spec.required else "optional"
            out.append(Check(name, True, f"can be opened ({kind})"))
        elif spec.required:
            out.append(Check(name, False, f"cannot be opened: {problem}", "make it available "
                             "(`serve` and every verb that writes entries stop until it is) or "
                             "fix [audit] sinks"))
        else:
            out.append(Check(name, True, f"cannot be opened: {problem} (optional: entries go to "
                             "the others)", "make it available or fix [audit] sinks", warn=True))
    return out


def _instance_checks(instances: list[Instance], now: float) -> list[Check]:
    """One line per instance alive on the store; a WARN for another version or schema."""
    alive = [instance for instance in instances if instance.alive(now)]
    gone = [instance.seen_ago(now) for instance in instances if not instance.alive(now)]
    gone_note = (f"; {len(gone)} more not seen for {_ago(min(gone))} or longer (stopped without "
                 "a clean shutdown; pruned after a day)") if gone else ""
    if not alive:
        return [Check("instances", True, f"none alive on this store{gone_note}")]
    here = socket.gethostname()
    out = [Check("instances", True, f"{len(alive)} alive on this store{gone_note}")]
    for instance in alive:
        detail = (f"host {instance.hostname}{' (this host)' if instance.hostname == here else ''}, "
                  f"{instance.address}, pid {instance.pid}, version {instance.version}, schema "
                  f"{instance.schema_version}, last seen {_ago(instance.seen_ago(now))} ago")
        differs = [what for what, theirs, ours in (
            ("version", instance.version, __version__),
            ("schema", str(instance.schema_version), str(LATEST))) if theirs != ours]
        fix = ""
        if differs:
            detail += (f"; its {' and '.join(differs)} differ from this appliance's "
                       f"({__version__}, schema {LATEST})")
            fix = "run one appliance version on every instance of a store (upgrade them in turn)"
        out.append(Check(f"instance {instance.id}", True, detail, fix, warn=bool(differs)))
    return out


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _tls(settings: Settings) -> list[Check]:
    tls = settings.tls
    state = settings.server.state_dir.absolute()
    if tls.mode == "acme":
        from appliance.tls.diagnosis import acme_checks

        return [Check(*finding) for finding in acme_checks(settings)]
    if tls.mode == "files":
        assert tls.cert_file is not None and tls.key_file is not None
        cert, key = tls.cert_file, tls.key_file
        fix = "check tls.cert_file and tls.key_file"
    else:
        cert = state / state_dir.TLS_DIR / "local.pem"
        key = state / state_dir.TLS_DIR / "local.key"
        fix = "start `appliance serve` once: it creates the local CA and certificate"
    try:
        info = load_pair(cert.read_bytes(), key.read_bytes(), origin=str(cert))
    except OSError as exc:
        return [Check("tls", False, f"cannot read {exc.filename}: {exc.strerror}", fix)]
    days = info.days_left()
    ok = days >= 7
    return [Check("tls", ok, f"{cert}: {', '.join(info.names)}, issuer {info.issuer}, "
                  f"{days:.0f} days left", "renew or replace the certificate" if not ok else "")]


def _ports(settings: Settings, instances: list[Instance]) -> list[Check]:
    now = time.time()
    here = [instance for instance in instances
            if instance.alive(now) and instance.hostname == socket.gethostname()]
    out = [_port_check("https listener", settings.server.listen, here)]
    if settings.server.http_listen is not None:
        out.append(_port_check("http listener", settings.server.http_listen, here))
    return out


def _port_of(address: str | None) -> int | None:
    """The port of a heartbeat's `HOST:PORT` (or `[V6]:PORT`) address."""
    if not address or not address.rpartition(":")[2].isdigit():
        return None
    return int(address.rpartition(":")[2])


def _serving(endpoint: Endpoint, here: Sequence[Instance]) -> Instance | None:
    """The instance alive on this host whose heartbeat says it listens on `endpoint`'s port."""
    for instance in here:
        if endpoint.port in (_port_of(instance.address), _port_of(instance.http_address)):
            return instance
    return None


def _port_check(name: str, endpoint: Endpoint, here: Sequence[Instance] = ()) -> Check:
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Check(name, False, f"{endpoint}: {exc.strerror}", "fix server.listen")
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                hint: Callable[[], str] = lambda: "choose another port"  # noqa: E731
                if exc.errno == errno.EADDRINUSE:
                    running = _serving(endpoint, here)
                    if running is not None:  # the appliance itself, per its heartbeat
                        return Check(name, True, f"{endpoint} is in use by the appliance running "
                                     f"here (instance {running.id}, pid {running.pid})")
                    detail = (f"{endpoint} is in use (by another program: no appliance on "
                              "this host has a heartbeat for it)")
                elif exc.errno == errno.EACCES:
                    detail = f"{endpoint}: permission denied"
                    hint = lambda: "ports below 1024 need CAP_NET_BIND_SERVICE"  # noqa: E731
                else:
                    detail = f"{endpoint}: {exc.strerror}"
                return Check(name, False, detail, hint())
    return Check(name, True, f"{endpoint} is free")




def _unit_credential(settings: Settings, root: Path) -> list[Check]:
    """The installed unit's `encryption-key` credential opens this store's keyring: else the
    service cannot start (e.g. `keys change-password` of an older version left it behind)."""
    credential = unit_credential.find(root)
    if credential is None:
        return []  # no unit installed here (or it names no such credential): nothing to compare
    name = "unit credential"
    if credential.encrypted:
        return [Check(name, True, f"{credential.path} is an encrypted credential: doctor cannot "
                      "compare it with the keyring", "after a secret change, check that "
                      "`systemctl restart appliance` succeeds", warn=True)]
    data = credential.reads()
    here = secret_file(settings)
    if data is None:
        return [Check(name, False, f"{credential.path} (named in {credential.unit}) is missing "
                      "or unreadable: the service cannot start",
                      f"install -m 600 {here} {credential.path}")]
    if len(data) < MIN_SECRET_BYTES:
        return [Check(name, False, f"{credential.path} holds {len(data)} bytes: the service "
                      "cannot start", f"install -m 600 {here} {credential.path}")]
    sqlite_file = sqlite_path(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        return []  # the store check says it is missing

    async def opens() -> bool | None:
        async with inspected_store(settings) as store:
            slots = await read_slots(store)
            if not slots:
                return None
            try:
                await open_root(slots, InstanceSecret(SOURCE_CREDENTIAL, str(credential.path),
                                                      Secret(data)))
            except WrongInstanceSecret:
                return False
            return True

    try:
        result = asyncio.run(opens())
    except StoreError:
        return []  # the store check already says why it does not open
    if result is None:
        return [Check(name, True, f"{credential.path}: no keyring yet (the first start creates "
                      "it with this credential)")]
    if result:
        return [Check(name, True, f"{credential.path} (named in {credential.unit}) opens this "
                      "store's keyring")]
    same_as_file = here.exists() and here.read_bytes() == data
    return [Check(name, False, f"{credential.path} (named in {credential.unit}) does not open "
                  "this store's keyring: the service will not start",
                  "restore the credential from your backup" if same_as_file else
                  f"if `appliance keys status` opens the store with {here}: "
                  f"install -m 600 {here} {credential.path}")]
