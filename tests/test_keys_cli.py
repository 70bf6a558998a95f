"""`appliance keys …` as a real subprocess: status, rotate, change-password, and both killed with
SIGKILL at random points then run again (KEYRING_KILL_LOOPS=N runs more than the default 8;
`make test` runs 20, KEYRING_KILL_SEED=S repeats a run's points)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import state_dir
from tests.conftest import ROOT, clean_env, run_cli
from tests.support.cli import run_verb
from tests.support.keyring import check_all, init_state, plaintexts, populate, raw_sql

KILL_LOOPS = int(os.environ.get("KEYRING_KILL_LOOPS", "8"))
SEED = int(os.environ.get("KEYRING_KILL_SEED", str(time.time_ns())))


@pytest.fixture
def populated(state: Path):
    secrets = plaintexts(240)

    async def setup():
        s = await init_state(state)
        await populate(s, secrets)
        return s

    return asyncio.run(setup()), secrets


def test_every_keys_verb_has_help():
    for verb in ("status", "rotate", "change-password"):
        result = run_verb("keys", verb, "--help")
        assert result.returncode == 0 and "--state-dir" in result.stdout, verb


def test_status_and_rotate(populated, state):
    s, secrets = populated
    result = run_cli("keys", "status", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert "v1       active" in result.stdout and f" {len(secrets)}\n" in result.stdout
    result = run_cli("keys", "rotate", "--state-dir", str(state), "--batch-size", "50")
    assert result.returncode == 0, result.stderr
    assert f"re-sealed {len(secrets)}/{len(secrets)} fields (100%)" in result.stdout
    assert "data key v2 is active (was v1)" in result.stdout and "retired v1" in result.stdout
    result = run_cli("keys", "status", "--state-dir", str(state))
    assert "v2       active" in result.stdout and "v1 " not in result.stdout
    asyncio.run(check_all(s, secrets))


def test_rotate_refuses_a_missing_store_and_bad_batch(tmp_path):
    state = tmp_path / "nothing"
    state.mkdir(mode=0o700)
    result = run_verb("keys", "rotate", "--state-dir", str(state))
    assert result.returncode != 0 and "appliance init" in result.stderr
    assert not (state / state_dir.STORE_FILE).exists()
    result = run_verb("keys", "rotate", "--state-dir", str(state), "--batch-size", "0")
    assert result.returncode == 2


def test_wrong_secret_refused_by_keys_and_serve(populated, state):
    state_dir.write_private(state / state_dir.INSTANCE_SECRET_FILE, os.urandom(32))
    for args in (["keys", "status"], ["serve", "--listen", "127.0.0.1:0"]):
        result = run_cli(*args, "--state-dir", str(state), timeout=60)
        assert result.returncode != 0, args
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "does not open this store's keyring" in errors[0], args
        assert "instance.key" in errors[0]
        assert "Traceback" not in result.stderr
    (state / state_dir.INSTANCE_SECRET_FILE).unlink()
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert result.returncode != 0 and "error: no instance secret" in result.stderr


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "appliance", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=ROOT)


def _kill_at_random(proc: subprocess.Popen[str], rng: random.Random, horizon: float,
                    loop: int) -> str:
    """SIGKILL after a random number of progress lines (even loops) or a random delay (odd
    loops: also before the first line); returns the output. Alternating, not a coin toss, so
    that a short run has both kinds of kill."""
    assert proc.stdout is not None
    if loop % 2 == 0:
        lines = rng.randint(1, 30)
        out = []
        for _ in range(lines):
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
        proc.kill()
        proc.wait()
        return "".join(out)
    time.sleep(rng.uniform(0, horizon))
    proc.kill()
    out, _ = proc.communicate()
    return out


def test_rotate_killed_at_random_points_then_resumed(populated, state):
    s, secrets = populated
    rng = random.Random(SEED)
    killed_mid_reseal = 0
    for loop in range(KILL_LOOPS):
        proc = _spawn("keys", "rotate", "--state-dir", str(state), "--batch-size", "9")
        out = _kill_at_random(proc, rng, horizon=1.5, loop=loop)
        if "re-sealed" in out and "is active (was" not in out and "resumed" not in out:
            killed_mid_reseal += 1
        vault = asyncio.run(check_all(s, secrets))  # every secret opens, at every point
        assert len(vault.keyring.keys) <= 2, f"loop {loop} (seed {SEED}): keys piled up"
    result = run_cli("keys", "rotate", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    vault = asyncio.run(check_all(s, secrets))
    assert len(vault.keyring.keys) == 1
    assert raw_sql(state, "SELECT DISTINCT key_version FROM sealed_fields") == [
        (vault.active_version,)]
    assert killed_mid_reseal >= 1 or KILL_LOOPS < 5, f"seed {SEED}: no kill landed mid-reseal"


def test_change_password_killed_at_random_points(populated, state):
    s, secrets = populated
    rng = random.Random(SEED + 1)
    secret_path = state / state_dir.INSTANCE_SECRET_FILE
    changed = 0
    for loop in range(KILL_LOOPS):
        before = secret_path.read_bytes()
        proc = _spawn("keys", "change-password", "--yes", "--state-dir", str(state))
        _kill_at_random(proc, rng, horizon=1.2, loop=loop)
        changed += secret_path.read_bytes() != before
        asyncio.run(check_all(s, secrets))  # the file's secret, old or new, always opens
        slots = raw_sql(state, "SELECT state FROM keyring_unseal")
        assert ("active",) in slots or slots == [("pending",)], f"loop {loop} (seed {SEED})"
    result = run_cli("keys", "change-password", "--yes", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    asyncio.run(check_all(s, secrets))
    assert raw_sql(state, "SELECT state FROM keyring_unseal") == [("active",)]


def test_change_password_needs_the_new_secret_for_external_sources(populated, state, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "encryption-key").write_bytes(os.urandom(32))
    env = clean_env(CREDENTIALS_DIRECTORY=str(creds))
    result = run_verb("keys", "change-password", "--state-dir", str(state), env=env)
    # This store was sealed with the file, not with this credential: refused before anything.
    assert result.returncode == 2 and "systemd credential" in result.stderr
    result = run_verb("keys", "change-password", "--state-dir", str(state), "--new-salt", "x")
    assert result.returncode == 2
