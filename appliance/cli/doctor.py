"""`appliance doctor`: one line per check, each with what to do when it fails.

Only reads: it never creates, migrates or repairs anything.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from appliance import state_dir
from appliance.cli.common import add_state_options, load_settings
from appliance.egress import Dialer, PolicyHolder
from appliance.errors import ApplianceError, ConfigError, StoreError
from appliance.settings import Endpoint, Settings
from appliance.store import open_store
from appliance.store.migrations import LATEST
from appliance.store.opener import describe, sqlite_path
from appliance.tls.certificates import load_pair


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check settings, state, store, TLS material and ports",
        description="Check the settings, the state directory's modes, the store and its "
                    "migrations, the TLS material and the listen ports. Prints one line per "
                    "check; exits 1 if any fails.",
    )
    add_state_options(parser)
    parser.add_argument("--dev", action="store_true", help="check the --dev configuration")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args, dev=args.dev)
    except ConfigError as exc:
        _print(Check("settings", False, exc.message, "fix the named key, then run doctor again"))
        return 2
    checks = [Check("settings", True,
                    f"valid ({settings.config_file or 'defaults and environment'})")]
    for check in (_state_dir, _instance_secret, _store, _tls, _ports):
        try:
            checks.extend(check(settings))
        except ApplianceError as exc:
            checks.append(Check(check.__name__.strip("_").replace("_", " "), False, exc.message))
    for result in checks:
        _print(result)
    return 0 if all(c.ok for c in checks) else 1


def _print(check: Check) -> None:
    line = f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}"
    if not check.ok and check.fix:
        line += f" -> {check.fix}"
    print(line)


def _state_dir(settings: Settings) -> list[Check]:
    path = settings.server.state_dir.absolute()
    try:
        state_dir.check(path)
    except ApplianceError as exc:
        return [Check("state directory", False, exc.message,
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
                      "run `appliance init` (or restore the file from your backup)")]
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        return [Check("instance secret", False, f"{path} is readable by others",
                      f"chmod 600 {path}")]
    if info.st_size != 32:
        return [Check("instance secret", False, f"{path} is {info.st_size} bytes, not 32",
                      "restore the file from your backup")]
    return [Check("instance secret", True, f"{path} (0600)")]


def _store(settings: Settings) -> list[Check]:
    path = describe(settings)
    sqlite_file = sqlite_path(settings)
    if sqlite_file is not None and not sqlite_file.exists():
        return [Check("store", False, f"{path} is missing", "run `appliance init`")]

    async def version() -> int:
        store = await open_store(settings, Dialer(PolicyHolder(settings.egress)), migrate=False)
        try:
            return await store.schema_version()
        finally:
            await store.close()

    try:
        current = asyncio.run(version())
    except StoreError as exc:
        return [Check("store", False, exc.message, "check [store] in the settings")]
    if current != LATEST:
        return [Check("store", False, f"{path} is at schema version {current}, latest is {LATEST}",
                      "start `appliance serve` once to migrate")]
    return [Check("store", True, f"{path} opens, schema version {current} (latest)")]


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


def _ports(settings: Settings) -> list[Check]:
    out = [_port_check("https listener", settings.server.listen)]
    if settings.server.http_listen is not None:
        out.append(_port_check("http listener", settings.server.http_listen))
    return out


def _port_check(name: str, endpoint: Endpoint) -> Check:
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
                    detail = f"{endpoint} is in use (is the appliance already running?)"
                elif exc.errno == errno.EACCES:
                    detail = f"{endpoint}: permission denied"
                    hint = lambda: "ports below 1024 need CAP_NET_BIND_SERVICE"  # noqa: E731
                else:
                    detail = f"{endpoint}: {exc.strerror}"
                return Check(name, False, detail, hint())
    return Check(name, True, f"{endpoint} is free")


