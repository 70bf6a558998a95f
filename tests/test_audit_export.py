"""`appliance audit export` and `appliance audit verify --file` (issue 24), as real CLI processes
over a real state directory: an export verifies; an edited, cut or reordered export is found at
its position; a header edited without the key is found; a range after pruning starts at the
checkpoint; bad arguments exit 2 with one line and write nothing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import BackgroundVerifier, Context
from appliance.audit import log as audit_log_module
from appliance.audit.retention import Pruner, cutoff_time
from appliance.core import open_core
from tests.conftest import clean_env, run_cli
from tests.support.app import TEST_TUNING, make_settings, prepare, store_env
from tests.support.cli import run_verb


def cli(state: Path, *args: str) -> Any:
    """`appliance ARGS` as a real subprocess: the export to standard output (written to the
    process's file descriptor 1) and the verb's process-level test (pruning)."""
    return run_cli(*args, "--state-dir", str(state), env=clean_env(**store_env(state)))


def verb(state: Path, *args: str) -> Any:
    """`appliance ARGS` in this process (tests/support/cli.py), for what the verb does."""
    return run_verb(*args, "--state-dir", str(state), env=clean_env(**store_env(state)))


async def entries(state: Path, count: int) -> None:
    s = make_settings(state)
    async with open_core(s, tuning=TEST_TUNING) as core:
        for i in range(count):
            await core.audit.record(action="query.run", target=f"query:q{i}",
                                    details={"datasource": "ds", "row_count": i},
                                    context=Context(actor="tester", client="203.0.113.9"))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write_lines(path: Path, values: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(json.dumps(v).encode() + b"\n" for v in values))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"

    async def made() -> None:
        await prepare(state, users=())
        await entries(state, 30)

    asyncio.run(made())
    return state


def test_an_export_verifies_and_any_change_to_it_is_found(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "range.jsonl"
    done = verb(state, "audit", "export", "--from-position", "5", "--to-position", "20",
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    header, *rows = lines(out)
    assert header["record"] == "audit-export" and (header["from"], header["to"]) == (5, 20)
    assert [r["position"] for r in rows] == list(range(5, 21))
    assert header["prev_hash"] == rows[0]["prev_hash"] and header["last_hash"] == rows[-1]["hash"]
    assert set(rows[0]) == {"position", "time", "actor", "action", "target", "outcome", "client",
                            "request_id", "details", "prev_hash", "hash", "mac_version"}
    ok = verb(state, "audit", "verify", "--file", str(out))
    assert ok.returncode == 0 and ok.stdout.startswith("export ok: 16 entries"), ok

    def check(values: list[dict[str, Any]], position: int, reason: str) -> None:
        bad = tmp_path / "bad.jsonl"
        write_lines(bad, values)
        found = verb(state, "audit", "verify", "--file", str(bad))
        assert found.returncode == 1, found
        assert f"BROKEN at position {position}: " in found.stdout and reason in found.stdout, (
            found.stdout)

    edited = [dict(r) for r in rows]
    edited[3]["target"] = "query:other"
    check([header, *edited], 8, "does not match its MAC")
    check([header, *rows[:-3]], 18, "entry 18 is missing")  # a cut tail
    check([header, *rows[2:]], 5, "entry 5 is missing (next is 7)")  # a cut head
    check([header, *rows[:4], *rows[5:]], 9, "entry 9 is missing")  # one removed
    check([header, rows[1], rows[0], *rows[2:]], 5, "missing")  # swapped
    check([header | {"to": 17, "last_hash": rows[12]["hash"]}, *rows[:13]], 5,
          "header does not match its MAC")  # a cut hidden by editing the header
    check([header, *rows[:6], {"position": 11}, *rows[7:]], 11, "line 8 is not an entry")
    other = tmp_path / "other.jsonl"
    other.write_text('{"record": "anchor", "position": 3}\n')
    not_export = verb(state, "audit", "verify", "--file", str(other))
    assert not_export.returncode == 2 and "not an audit export" in not_export.stderr
    gone = verb(state, "audit", "verify", "--file", str(tmp_path / "gone.jsonl"))
    assert gone.returncode == 2 and "cannot read" in gone.stderr


def test_export_by_time_to_stdout(state: Path) -> None:
    since = cutoff_time(time.time() + 3600, 0).replace("+00:00", "Z")
    empty = cli(state, "audit", "export", "--since", since, "--out", "-")
    assert empty.returncode == 2 and "no entry in that range" in empty.stderr
    everything = cli(state, "audit", "export", "--since", "2020-01-01T00:00:00+02:00",
                     "--until", since, "--out", "-")
    assert everything.returncode == 0, everything.stderr
    header = json.loads(everything.stdout.splitlines()[0])
    assert header["from"] == 1 and header["prev_hash"] == "0" * 64


async def test_an_export_after_pruning_starts_behind_the_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    with monkeypatch.context() as patch:  # the real write path, with an old clock
        patch.setattr(audit_log_module, "_now", lambda: cutoff_time(time.time(), 40))
        await prepare(state, users=(), fresh=True)
        await entries(state, 10)
    await entries(state, 3)
    async with open_core(make_settings(state), tuning=TEST_TUNING) as core:
        pruned = await Pruner(core.audit, BackgroundVerifier(core.audit, interval=60),
                              keep_days=30).run_once()
    assert pruned is not None and pruned.count > 10
    out = tmp_path / "all.jsonl"
    done = cli(state, "audit", "export", "--out", str(out))
    assert done.returncode == 0, done.stderr
    header, *rows = lines(out)
    assert header["from"] == pruned.through + 1 and rows[0]["position"] == header["from"]
    assert header["keyed_from"] == 1
    ok = cli(state, "audit", "verify", "--file", str(out))
    assert ok.returncode == 0, ok
    full = cli(state, "audit", "verify", "--full")
    assert full.returncode == 0, full
    assert full.stdout.startswith(f"full from position {pruned.through + 1} (1 to "
                                  f"{pruned.through} pruned, behind the checkpoint at "
                                  f"{pruned.checkpoint})"), full.stdout
    before = cli(state, "audit", "export", "--from-position", "1", "--out", "-")
    assert before.returncode == 0 and json.loads(before.stdout.splitlines()[0])["from"] == (
        pruned.through + 1)


def test_bad_arguments_exit_2_with_one_line_and_write_nothing(state: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    for args, says in [
        (("--since", "yesterday"), "--since: 'yesterday' is not an RFC 3339 time"),
        (("--since", "2026-12-03T12:00:00"), "needs a date, a time and an offset"),
        (("--since", "2026-12-03T12:00:00Z", "--until", "2026-12-02T12:00:00Z"),
         "--until is before --since"),
        (("--from-position", "x"), "--from-position: 'x' is not a position"),
        (("--from-position", "9", "--to-position", "3"), "--to-position is before"),
    ]:
        done = verb(state, "audit", "export", *args, "--out", str(out))
        assert done.returncode == 2, (args, done)
        assert done.stderr.strip().splitlines() == [f"error: {done.stderr.strip()[7:]}"]
        assert says in done.stderr, done.stderr
        assert not out.exists()
    # A range the store holds nothing in: found after the store is open, one line all the same
    # (on a PostgreSQL store too: closing it after the error must log nothing).
    empty = verb(state, "audit", "export", "--from-position", "999999", "--out", str(out))
    assert empty.returncode == 2 and empty.stderr.strip().splitlines() == [
        "error: no entry in that range (none retained, or the range is empty)"], empty.stderr
    assert not out.exists()
    missing = verb(state, "audit", "export", "--out", str(tmp_path / "nowhere" / "x.jsonl"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "does not exist" in missing.stderr
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    unwritable = verb(state, "audit", "export", "--out", str(blocker / "x.jsonl"))
    assert unwritable.returncode == 2 and len(unwritable.stderr.strip().splitlines()) == 1
    out.write_text("keep me")
    exists = verb(state, "audit", "export", "--out", str(out))
    assert exists.returncode == 2 and "exists (--force replaces it)" in exists.stderr
    assert out.read_text() == "keep me"
    forced = verb(state, "audit", "export", "--out", str(out), "--force")
    assert forced.returncode == 0 and lines(out)[0]["record"] == "audit-export"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
