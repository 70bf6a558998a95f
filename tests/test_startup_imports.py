"""What a process imports to start: each real `appliance` process loads the modules its work needs
and not those of work it does not do (docs/performance.md, "Start-up": each is CPU paid at every
start). Owns these checks against real processes on a real state; never times anything.
"""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, clean_env, start_server
from tests.support.app import prepare, store_env

# Loaded only by the work that needs them (the lazy import's comment says why).
BINDINGS = ("appliance.kinds.sql.binding", "appliance.kinds.mongodb.binding",
            "appliance.kinds.rest.binding", "appliance.kinds.mysql.binding")
DRIVERS = ("asyncpg", "asyncmy", "pymongo")
ACME = ("acme", "josepy", "requests")
# argon2: at the first password hash or check; prometheus_client: at the first scrape.
ON_USE = ("argon2", "prometheus_client")
# Loaded by the first request that needs them.
ROUTE_ONLY = ("appliance.config_files",)
SEALED = ("aiohttp", "yarl", "appliance.datasources", "appliance.queries", *BINDINGS)

PROBE = ("import sys\nfrom appliance.cli import main\n"
         "try:\n    code = main(sys.argv[2:])\nexcept SystemExit as exc:\n    code = exc.code\n"
         "print('LOADED', [m for m in sys.argv[1].split(',') if m in sys.modules], code,"
         " file=sys.stderr)\n")


def _loaded_by(state: Path, watched: tuple[str, ...], *args: str) -> tuple[list[str], str]:
    """Which of `watched` a real `appliance ARGS --state-dir STATE` process had loaded when it
    ended, and its exit code."""
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(watched), *args,
                           "--state-dir", str(state)], capture_output=True, text=True,
                          env=clean_env(**store_env(state)), cwd=ROOT, timeout=60)
    match = re.search(r"^LOADED (\[.*\]) (\S+)$", done.stderr, re.M)
    assert match, done.stderr
    return ast.literal_eval(match.group(1)), match.group(2)


def _imported(stderr: str) -> set[str]:
    """The modules named by `python -X importtime` in a process's stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_a_sealed_verb_loads_no_datasource_query_compiler_or_http_client(tmp_path: Path) -> None:
    state = tmp_path / "state"
    asyncio.run(prepare(state, tokens=True))
    for verb in (("users", "list"), ("tokens", "list")):
        loaded, code = _loaded_by(state, SEALED, *verb)
        assert code == "0" and loaded == [], verb
    # an unsealed verb opens the datasources and queries, still without aiohttp or a compiler
    loaded, code = _loaded_by(state, SEALED, "audit", "verify")
    assert code == "0" and {"appliance.datasources", "appliance.queries"} <= set(loaded)
    assert not {"aiohttp", *BINDINGS} & set(loaded)


def test_doctor_loads_no_aiohttp(tmp_path: Path) -> None:
    state = tmp_path / "state"
    asyncio.run(prepare(state))
    loaded, _ = _loaded_by(state, ("aiohttp", *ACME, *BINDINGS), "doctor")
    assert loaded == []


def test_serve_loads_no_driver_acme_client_compiler_or_hasher_before_use(tmp_path: Path) -> None:
    """A local-CA `serve` whose store holds no query: none of them (a query's kind loads its
    compiler at its first compile: every query test compiles one)."""
    state = tmp_path / "state"
    asyncio.run(prepare(state))
    command = [sys.executable, "-X", "importtime", "-m", "appliance"]
    server = start_server(["serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
                          cwd=tmp_path, env=clean_env(**store_env(state)), command=command)
    try:  # an answer: the signal handlers are in place (they are set before the first await)
        with urllib.request.urlopen(f"{server.url}/healthz", context=server.client_context(),
                                    timeout=30) as answer:
            assert answer.status == 200
    finally:
        assert server.stop() == 0
    imported = _imported(server.stderr())
    assert "aiohttp.web" in imported and "appliance.http.app" in imported  # the probe works
    # A PostgreSQL store (APPLIANCE_TEST_STORE=postgres) is asyncpg's own use, from the start.
    store_driver = {"asyncpg"} if store_env(state) else set()
    assert {*DRIVERS, *ACME, *BINDINGS, *ROUTE_ONLY, *ON_USE} & imported == store_driver

