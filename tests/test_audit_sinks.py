"""Audit sinks against the real thing: a real systemd-journald (a journal namespace of the test's
own, read back with journalctl), a Unix datagram socket the test owns for syslog (its RFC 5424
parser checked against `logger`) and for journald's native protocol (memfd included), real
files. Entries arrive in order, one JSON line each, exactly the store's rows; a required sink
that fails raises `SinkFailed` (naming the sink, nothing of an entry) and an optional one does
not; files reopen after `mv` (SIGHUP's hook included) and come back when deleted."""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import metrics
from appliance.audit import AuditLog, Context, FixedMacKeys
from appliance.audit.sinks import (
    ENTRY_FIELDS,
    FileSink,
    JournalSink,
    SinkFailed,
    Sinks,
    journal_field,
    open_sinks,
)
from appliance.errors import ConfigError
from appliance.reload import Reloader
from appliance.settings import SinkSpec
from appliance.store import open_sqlite_store
from tests.support.journald import journald


def entries(count: int, start: int = 1, *, tag: str = "a") -> list[dict[str, Any]]:
    """Rows as the store holds them (`seq`, details as the stored JSON text)."""
    return [{"seq": n, "time": f"2026-12-03T13:00:{n % 60:02d}.000000+00:00", "actor": "alice",
             "action": "query.run", "target": f"query:{n}", "outcome": "ok",
             "client": "192.0.2.7", "request_id": f"r{n}",
             "details": json.dumps({"n": n, "tag": tag}, separators=(",", ":")),
             "prev_hash": f"{n - 1:064x}", "hash": f"{n:063x}{tag}"}
            for n in range(start, start + count)]


def as_line(row: dict[str, Any]) -> dict[str, Any]:
    line = dict(row)
    line["position"] = line.pop("seq")
    return line


def file_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- a socket the test owns: datagrams as a daemon receives them ---------------------------------


class Receiver:
    """A Unix datagram socket at `path`, collecting what arrives (with any passed descriptor's
    contents in place of an empty datagram, as journald reads a memfd)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5)

    def receive(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            data, ancillary, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % 4])
                    for fd in fds:
                        # journald refuses a memfd that is not sealed against every change
                        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                        assert seals == (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                                         | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
                        assert not data  # the datagram itself is empty
                        data = os.pread(fd, os.fstat(fd).st_size, 0)  # as journald maps it
                        os.close(fd)
            out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "daemon.sock")
    yield r
    r.close()


def parse_native(data: bytes) -> dict[str, bytes]:
    """journald's native protocol, as journald parses it: `KEY=value\\n`, or `KEY\\n`, a 64-bit
    little-endian length, the value and `\\n`."""
    fields: dict[str, bytes] = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            at = end + 1
        else:
            key = line
            size = int.from_bytes(data[end + 1:end + 9], "little")
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n"
            at = end + 10 + size
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", key), key
        fields[key.decode()] = value
    return fields


RFC5424 = re.compile(rb"<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) "
                     rb"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[[^\]]*\])+)(?: (?P<msg>.*))?",
                     re.DOTALL)


def parse_syslog(data: bytes) -> dict[str, bytes]:
    match = RFC5424.fullmatch(data)
    assert match, data[:200]
    return {key: value or b"" for key, value in match.groupdict().items()}


# -- file ------------------------------------------------------------------------------------------


def test_file_sink_writes_each_entry_as_one_line_in_order_mode_0640(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))])
    rows = entries(700)
    sinks.deliver(rows[:512])  # a group commit's largest batch
    sinks.deliver(rows[512:])
    sinks.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 700
    assert file_lines(path) == [as_line(row) for row in rows]
    first = text.splitlines()[0]
    assert list(json.loads(first)) == [f for f in ENTRY_FIELDS if f != "mac_version"]


def test_file_sink_writes_a_batch_in_one_write(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sinks = open_sinks([SinkSpec("file", str(tmp_path / "audit.jsonl"))])
    calls: list[int] = []
    real = os.write

    def counting(fd: int, data: Any) -> int:
        calls.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counting)
    sinks.deliver(entries(300))
    assert len(calls) == 1


async def test_a_sink_receives_the_stores_rows_and_nothing_more(tmp_path: Path) -> None:
    """The entries come from the real write path (redacted there); the sink's lines are the
    stored rows, field for field, and no secret reaches them."""
    store = await open_sqlite_store(tmp_path / "audit.db")
    audit = AuditLog(store, keys=FixedMacKeys.generate())
    try:
        for n in range(5):
            async with store.transaction() as tx:
                await audit.record(tx, action="datasource.update", target=f"datasource:{n}",
                                   details={"password": "hunter2-secret", "n": n,
                                            "secrets": {"token": "tok-secret-9"}},
                                   context=Context(actor="admin", client="192.0.2.1"))
        rows = [dict(row) for row in
                await store.fetch_all("SELECT * FROM audit_log ORDER BY seq")]
    finally:
        await audit.close()
        await store.close()
    path = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))])
    sinks.deliver(rows)
    assert file_lines(path) == [as_line(row) for row in rows]
    raw = path.read_bytes()
    assert b"hunter2" not in raw and b"tok-secret" not in raw
    with pytest.raises(ValueError, match="not an audit entry field"):
        sinks.deliver([{**rows[0], "password": "x"}])


def test_missing_directory_refuses_the_start_naming_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "audit.jsonl"
    with pytest.raises(ConfigError) as caught:
        open_sinks([SinkSpec("file", str(missing))])
    assert caught.value.key == "audit.sinks"
    assert f"file:{missing}" in caught.value.message
    assert "does not exist" in caught.value.message
    # optional: the start goes on, the failures are counted
    sinks = open_sinks([SinkSpec("file", str(missing), required=False)])
    sinks.deliver(entries(3))


def test_required_file_sink_fails_closed_when_its_directory_is_removed(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    name = f"file:{directory}/audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(directory / "audit.jsonl"))])
    sinks.deliver(entries(2))
    before = metrics._audit_sinks[name][:]
    shutil.rmtree(directory)
    with pytest.raises(SinkFailed) as caught:
        sinks.deliver(entries(3, start=3))
    assert caught.value.sinks == (name,)
    assert caught.value.status == 503
    assert "query" not in caught.value.message and "alice" not in caught.value.message
    assert metrics._audit_sinks[name][1] == before[1] + 3
    directory.mkdir()  # back: the next batch writes again, to a new file
    sinks.deliver(entries(1, start=3))
    assert [line["position"] for line in file_lines(directory / "audit.jsonl")] == [3]


def test_a_write_that_fails_raises_for_a_required_sink_only(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    with pytest.raises(SinkFailed, match="file:/dev/full"):
        open_sinks([SinkSpec("file", "/dev/full")]).deliver(entries(1))
    open_sinks([SinkSpec("file", "/dev/full", required=False)]).deliver(entries(1))


def test_a_deleted_file_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))])
    sinks.deliver(entries(2))
    path.unlink()
    sinks.deliver(entries(2, start=3))
    assert [line["position"] for line in file_lines(path)] == [3, 4]


def test_reopen_after_mv_writes_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))])
    sinks.deliver(entries(3))
    rotated = tmp_path / "audit.jsonl.1"
    path.rename(rotated)  # logrotate's move
    sinks.deliver(entries(1, start=4))  # before the SIGHUP: still the moved file
    sinks.reopen()
    sinks.deliver(entries(2, start=5))
    assert [line["position"] for line in file_lines(rotated)] == [1, 2, 3, 4]
    assert [line["position"] for line in file_lines(path)] == [5, 6]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_an_existing_file_keeps_its_mode_and_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier":1}\n')
    path.chmod(0o600)  # as logrotate's `create 0600` made it
    open_sinks([SinkSpec("file", str(path))]).deliver(entries(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[0] == '{"earlier":1}'


async def test_sighup_reload_reopens_the_core_s_sinks(tmp_path: Path) -> None:
    """The reload hook (appliance.reload): the core's `audit_sinks`, reopened on SIGHUP."""
    from tests.support.app import make_settings

    path = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))])
    sinks.deliver(entries(1))
    path.rename(tmp_path / "audit.jsonl.1")
    settings = make_settings(tmp_path / "state")
    tls = types.SimpleNamespace(check=lambda: False, settings=settings.tls)
    core = types.SimpleNamespace(tls=tls, audit_sinks=sinks)
    reloader = Reloader(lambda: core, settings, lambda: settings)
    report = await reloader.reload()
    assert report.applied == ["audit.sinks (reopened)"]
    sinks.deliver(entries(1, start=2))
    assert [line["position"] for line in file_lines(path)] == [2]


def test_deliver_is_thread_safe(tmp_path: Path) -> None:
    """Batches from several threads (the store's writer, the anchorer) never interleave."""
    path = tmp_path / "audit.jsonl"
    sinks = open_sinks([SinkSpec("file", str(path))])

    def write(tag: str) -> None:
        for batch in range(20):
            sinks.deliver(entries(50, start=1 + batch * 50, tag=tag))

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = file_lines(path)
    assert len(lines) == 4000
    for tag in "abcd":  # each thread's lines are in its order
        mine = [line["position"] for line in lines if line["hash"].endswith(tag)]
        assert mine == list(range(1, 1001))


def test_optional_sink_failures_are_counted_and_logged_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="appliance.audit.sinks")
    directory = tmp_path / "logs"
    directory.mkdir()
    spec = SinkSpec("file", str(directory / "audit.jsonl"), required=False)
    now = [1000.0]
    sinks = Sinks([FileSink(spec)], clock=lambda: now[0])
    shutil.rmtree(directory)
    before = metrics._audit_sinks.get(spec.name, [0, 0])[1]
    for _ in range(100):
        sinks.deliver(entries(5))
    failed = [r for r in caplog.records if r.getMessage() == "audit sink failed"]
    assert len(failed) == 1 and failed[0].levelname == "WARNING"
    assert metrics._audit_sinks[spec.name][1] == before + 500
    now[0] += 61
    sinks.deliver(entries(5))
    failed = [r for r in caplog.records if r.getMessage() == "audit sink failed"]
    assert len(failed) == 2 and failed[1].entries == 5 + 99 * 5  # type: ignore[attr-defined]  # the failure's own attribute
    directory.mkdir()
    sinks.deliver(entries(1))
    assert [r.getMessage() for r in caplog.records][-1] == "audit sink writes again"
    for record in caplog.records:  # nothing of an entry in any line
        assert "alice" not in str(record.__dict__) and "query:" not in str(record.__dict__)


def test_a_failed_required_sink_withdraws_the_batch_from_the_others(tmp_path: Path) -> None:
    """The batch is rolled back: the sinks that took it get a `withdrawn` line for it."""
    good, gone = tmp_path / "good.jsonl", tmp_path / "gone"
    gone.mkdir()
    sinks = open_sinks([SinkSpec("file", str(good)), SinkSpec("file", str(gone / "a.jsonl"))])
    shutil.rmtree(gone)
    with pytest.raises(SinkFailed):
        sinks.deliver(entries(3))
    lines = file_lines(good)
    assert [line.get("position") for line in lines[:3]] == [1, 2, 3]
    assert lines[3]["record"] == "withdrawn" and (lines[3]["from"], lines[3]["to"]) == (1, 3)


def test_metrics_expose_each_sink(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    open_sinks([SinkSpec("file", str(path))]).deliver(entries(7))
    text = metrics.exposition().decode()
    assert re.search(rf'appliance_audit_sink_lines_total{{sink="file:{re.escape(str(path))}"}} 7',
                     text)
    assert "appliance_audit_sink_failures_total" in text


# -- syslog ---------------------------------------------------------------------------------------


def test_syslog_sink_sends_rfc5424_with_the_line_as_msg(receiver: Receiver) -> None:
    sinks = open_sinks([SinkSpec("syslog", receiver.path)])
    rows = entries(3)
    sinks.deliver(rows)
    sinks.anchor(3, rows[-1]["hash"], "2026-12-03T13:00:04.000000+00:00", "i-1")
    got = [parse_syslog(data) for data in receiver.receive(4)]
    for row, message in zip(rows, got[:3], strict=True):
        assert message["pri"] == b"86"  # authpriv.info
        assert message["app"] == b"appliance-audit" and message["msgid"] == b"entry"
        assert message["time"] == row["time"].encode()
        assert message["procid"] == str(os.getpid()).encode() and message["sd"] == b"-"
        assert json.loads(message["msg"]) == as_line(row)
    assert got[3]["msgid"] == b"anchor"
    assert json.loads(got[3]["msg"])["position"] == 3


def test_the_syslog_parser_reads_what_logger_sends(receiver: Receiver) -> None:
    if shutil.which("logger") is None:
        pytest.skip("util-linux logger is not installed")
    subprocess.run(["logger", "--rfc5424=notq", "-u", receiver.path, "-p", "authpriv.info",
                    "-t", "appliance-audit", "--msgid", "entry", '{"position":1}'],
                   check=True, timeout=10)
    message = parse_syslog(receiver.receive(1)[0])
    assert message["pri"] == b"86" and message["app"] == b"appliance-audit"
    assert message["msgid"] == b"entry" and message["msg"] == b'{"position":1}'


def test_syslog_socket_gone(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    r = Receiver(path)
    sinks = open_sinks([SinkSpec("syslog", str(path)),
                        SinkSpec("syslog", str(path) + "x", required=False)])  # never there
    r.close()  # the daemon went away
    with pytest.raises(SinkFailed, match=f"syslog:{re.escape(str(path))}"):
        sinks.deliver(entries(1))
    with pytest.raises(ConfigError, match=r"audit.sinks: syslog:.* cannot be opened: socket"):
        open_sinks([SinkSpec("syslog", str(path))])


# -- journald's native protocol: a socket the test owns, then the real journald ------------------


def test_journal_sink_speaks_the_native_protocol(receiver: Receiver) -> None:
    sinks = open_sinks([SinkSpec("journal")], socket_paths={"journal": receiver.path})
    rows = entries(2)
    sinks.deliver(rows)
    big = {**entries(1, start=3)[0], "details": json.dumps({"text": "x" * 400_000})}
    sinks.deliver([big])  # beyond a datagram: a sealed memfd
    got = [parse_native(data) for data in receiver.receive(3)]
    for row, fields in zip([*rows, big], got, strict=True):
        assert fields["PRIORITY"] == b"6"
        assert fields["SYSLOG_IDENTIFIER"] == b"appliance-audit"
        assert fields["APPLIANCE_AUDIT_RECORD"] == b"entry"
        assert fields["APPLIANCE_AUDIT_POSITION"] == str(row["seq"]).encode()
        assert fields["APPLIANCE_AUDIT_HASH"] == row["hash"].encode()
        assert json.loads(fields["APPLIANCE_AUDIT_JSON"]) == as_line(row)
        assert fields["MESSAGE"] == fields["APPLIANCE_AUDIT_JSON"]


def test_journal_field_binary_safe_form() -> None:
    assert journal_field("A", b"x=y") == b"A=x=y\n"
    encoded = journal_field("MESSAGE", b"two\nlines")
    assert encoded == b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n"
    assert parse_native(encoded) == {"MESSAGE": b"two\nlines"}


def test_real_journald_keeps_every_entry_in_order() -> None:
    with journald() as journal:
        sinks = open_sinks([SinkSpec("journal")], socket_paths={"journal": journal.socket})
        rows = entries(600)
        sinks.deliver(rows[:512])
        sinks.deliver(rows[512:])
        big = {**entries(1, start=601)[0], "details": json.dumps({"text": "y" * 300_000})}
        sinks.deliver([big])
        sinks.anchor(601, big["hash"], "2026-12-03T13:01:00.000000+00:00", "instance-1")
        # the binary-safe form, through the sink's own socket
        sink = sinks.sinks[0]
        assert isinstance(sink, JournalSink)
        sink.send(journal_field("MESSAGE", b"first\nsecond") + b"SYSLOG_IDENTIFIER=nl-test\n")
        found = journal.wait_for(602, "SYSLOG_IDENTIFIER=appliance-audit")
        assert len(found) == 602
        lines = [json.loads(entry["APPLIANCE_AUDIT_JSON"]) for entry in found]
        assert lines[:601] == [as_line(row) for row in [*rows, big]]
        assert [int(e["APPLIANCE_AUDIT_POSITION"]) for e in found[:601]] == list(range(1, 602))
        assert found[0]["PRIORITY"] == "6" and found[0]["MESSAGE"] == found[0][
            "APPLIANCE_AUDIT_JSON"]
        assert lines[601]["record"] == "anchor" and found[601]["APPLIANCE_AUDIT_RECORD"] == "anchor"
        newline = journal.wait_for(1, "SYSLOG_IDENTIFIER=nl-test")
        assert newline[0]["MESSAGE"] == "first\nsecond"


def test_journal_gone_fails_closed() -> None:
    with journald() as journal:
        sinks = open_sinks([SinkSpec("journal")], socket_paths={"journal": journal.socket})
        optional = open_sinks([SinkSpec("journal", required=False)],
                              socket_paths={"journal": journal.socket})
        sinks.deliver(entries(1))
    # journald stopped and its socket removed
    with pytest.raises(SinkFailed, match="journal"):
        sinks.deliver(entries(1, start=2))
    optional.deliver(entries(1, start=2))
