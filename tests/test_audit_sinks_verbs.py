"""The audit sinks and the CLI verbs: a verb that writes entries opens `[audit] sinks` (a required
one that cannot be opened stops it with exit 2 before it writes anything, or rolls its entry's
transaction back); a verb that only reads never opens them, so it works while a required sink is
unavailable (issue 24's follow-up). Real `appliance` processes on a real store (SQLite, or
PostgreSQL under APPLIANCE_TEST_STORE=postgres); a real file sink in a directory that is missing
and then made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.audit import Context
from appliance.audit.sinks import open_sinks, probe
from appliance.core import open_core
from appliance.errors import ConfigError
from appliance.settings import SinkSpec
from tests.support.app import TEST_TUNING, make_settings, prepare
from tests.support.sink_verbs import Verbs

ROW = {"seq": 7, "time": "2026-01-01T00:00:00.000000+00:00", "actor": "a", "action": "x",
       "target": "t", "outcome": "ok", "client": "", "request_id": "", "details": "{}",
       "prev_hash": "p", "hash": "h", "mac_version": 1}


@pytest.fixture
async def verbs(tmp_path: Path) -> Verbs:
    made = Verbs(tmp_path)
    await prepare(made.state)
    return made


def test_read_only_verbs_work_while_a_required_sink_cannot_open(verbs: Verbs,
                                                                tmp_path: Path) -> None:
    before = verbs.entries()
    assert verbs.users() == {"admin": False, "viewer": False, "developer": False}
    export = tmp_path / "range.jsonl"
    for args in (("audit", "verify"), ("audit", "verify", "--full"),
                 ("audit", "export", "--out", str(export)),
                 ("audit", "verify", "--file", str(export)),
                 ("keys", "status"), ("tokens", "list"),
                 ("import", str(tmp_path / "no-such-dir"), "--dry-run")):
        done = verbs(*args)
        if args[0] == "import":  # it stops at the missing directory, not at the sink
            assert done.returncode == 2 and "audit.sinks" not in done.stderr, done.stderr
            continue
        assert done.returncode == 0, (args, done.stdout + done.stderr)
        assert "audit.sinks" not in done.stderr
    assert verbs.entries() == before  # they wrote no entry
    assert not verbs.logs.exists()  # and opened no sink
    # doctor says so, opening nothing either
    done = verbs("doctor")
    assert f"FAIL  audit sink file:{verbs.sink}: cannot be opened: directory {verbs.logs} does " \
        "not exist (ENOENT) -> make it available" in done.stdout, done.stdout
    assert done.returncode == 1 and not verbs.logs.exists()


def test_a_writing_verb_fails_closed_with_exit_2_and_writes_nothing(verbs: Verbs,
                                                                    tmp_path: Path) -> None:
    before = verbs.entries()
    out = tmp_path / "export"
    attempts = [
        ("users", "add", "carol", "--role", "viewer", "--password-file", str(verbs.password)),
        ("users", "disable", "viewer"),
        ("tokens", "create", "admin", "--allow-without-2fa"),
        ("export", str(out)),  # opens the sinks before it reads the store
    ]
    for args in attempts:
        done = verbs(*args)
        assert done.returncode == 2, (args, done.stdout + done.stderr)
        assert "audit.sinks" in done.stderr and str(verbs.logs) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert verbs.entries() == before
    assert verbs.users() == {"admin": False, "viewer": False, "developer": False}
    assert json.loads(verbs("tokens", "list", "--json").stdout) == []
    assert not out.exists() and not verbs.logs.exists()
    # The sink's directory made: the same verb writes its entry to the store and to the sink.
    verbs.logs.mkdir()
    done = verbs(*attempts[0])
    assert done.returncode == 0, done.stderr
    added = verbs.entries()[0]
    assert added["action"] == "user.create" and added["position"] > before[0]["position"]
    lines = [json.loads(line) for line in verbs.sink.read_text().splitlines()]
    assert [(line["position"], line["action"], line["hash"]) for line in lines] == \
        [(added["position"], "user.create", added["hash"])]
    assert verbs.users()["carol"] is False


async def test_the_core_opens_sinks_at_once_only_for_a_writer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await prepare(state)
    missing = tmp_path / "logs" / "audit.jsonl"
    s = make_settings(state, audit_sinks=f"file:{missing}")
    assert s.audit.sinks and s.audit.sinks[0].required
    with pytest.raises(ConfigError) as caught:
        async with open_core(s, unseal=False, writing=True, tuning=TEST_TUNING):
            pass
    assert caught.value.key == "audit.sinks"
    async with open_core(s, unseal=False, tuning=TEST_TUNING) as core:
        assert core.audit_sinks and not core.audit_sinks.opened
        head = await core.audit.head()
        with pytest.raises(ConfigError):  # its first entry: opened then, and refused
            async with core.store.transaction() as tx:
                await tx.execute("UPDATE users SET disabled = 1 WHERE username = 'viewer'")
                await core.audit.record(tx, action="user.disable", target="user:viewer",
                                        context=Context(actor="test"))
        assert await core.audit.head() == head  # rolled back with the change
        row = await core.store.fetch_one("SELECT disabled FROM users WHERE username = 'viewer'")
        assert row is not None and not row["disabled"]
        assert not missing.parent.exists()


def test_deferred_sinks_open_at_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))], deferred=True)
    assert sinks and not sinks.opened
    sinks.withdraw([ROW])  # nothing was delivered: nothing to say
    sinks.reopen()
    assert sinks.anchor(7, "h", ROW["time"], "i") == ["audit.sinks"]  # never raises
    with pytest.raises(ConfigError) as caught:
        sinks.deliver([ROW])
    assert caught.value.key == "audit.sinks" and not sinks.opened
    path.parent.mkdir()
    sinks.deliver([ROW])
    assert sinks.opened
    assert [json.loads(line)["position"] for line in path.read_text().splitlines()] == [7]
    sinks.close()
    assert not open_sinks([], deferred=True)  # none configured: nothing to open, ever


def test_probe_opens_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    spec = SinkSpec("file", str(path))
    assert probe(spec) == f"directory {path.parent} does not exist (ENOENT)"
    path.parent.mkdir()
    assert probe(spec) is None and not path.exists()
    (tmp_path / "plain").write_text("")
    assert probe(SinkSpec("syslog", str(tmp_path / "plain"))) == \
        f"{tmp_path / 'plain'} is not a socket (ENOTSOCK)"
    assert probe(SinkSpec("journal", str(tmp_path / "gone"))) == \
        f"socket {tmp_path / 'gone'} is not there (ENOENT)"
