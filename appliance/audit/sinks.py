"""Audit sinks: every audit entry, and every anchor of the chain's head, also written as one JSON
line to systemd-journald, syslog or a file, where the store's writer cannot rewrite it.

Owns the sinks' wire formats (journald's native protocol, RFC 5424 over a Unix datagram socket, JSON
lines appended to a file), the failure policy (a required sink fails closed with `SinkFailed`; an
optional one is counted and logged at most once a minute), when they are opened (at once for a
process that writes entries; at its first line for one that only reads, so a read-only verb never
needs them) and the reopening of files (SIGHUP, logrotate). Never adds anything to an entry (a line
is the store's row: its details are the stored, already-redacted JSON text), never puts an entry's
content in a log line, an error or a metric, and never touches the event loop: `deliver` runs in the
store's writer thread and may block only on a sink's own short timeout.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import orjson

from appliance import metrics
from appliance.errors import ConfigError, ServiceUnavailable
from appliance.settings import SinkSpec

log = logging.getLogger("appliance.audit.sinks")

# The fields of an entry line, in this order: the store's row (`seq` is written `position`).
ENTRY_FIELDS = ("position", "time", "actor", "action", "target", "outcome", "client",
                "request_id", "details", "prev_hash", "hash", "mac_version")
_ENTRY_KEYS = frozenset(ENTRY_FIELDS) | {"seq"}

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
IDENTIFIER = "appliance-audit"  # journald's SYSLOG_IDENTIFIER and syslog's APP-NAME
# RFC 5424 PRI: facility authpriv (10: security/authorization messages, kept apart from the
# general syslog by every distribution's default rules) * 8 + severity informational (6).
SYSLOG_PRI = 10 * 8 + 6
SEND_TIMEOUT = 2.0  # seconds a datagram may wait for a full socket before the sink has failed
LOG_EVERY = 60.0  # seconds between two log lines about one failing optional sink


class SinkFailed(ServiceUnavailable):
    """A required sink could not take a batch: the caller rolls its transaction back (the
    entries are not written anywhere that counts). Names the sinks, never an entry."""

    code = "audit_sink_failed"

    def __init__(self, sinks: Sequence[str]) -> None:
        super().__init__(f"required audit sink {', '.join(sinks)} cannot be written")
        self.sinks = tuple(sinks)


class Line(NamedTuple):
    """One record as every sink writes it: `record` is entry, anchor or withdrawn; `json` the
    line's bytes (no newline: orjson escapes every newline inside a string). A named tuple: one
    is made per entry in the writer's thread, and a tuple is the quickest to make."""

    record: str
    position: int
    hash: str
    time: str
    json: bytes


_AFTER_POSITION = ENTRY_FIELDS[1:]


def entry_line(entry: Mapping[str, Any]) -> Line:
    """The line of one entry: its fields in `ENTRY_FIELDS` order, nothing else. `details` must be
    the stored JSON text (a str: the bytes the chain's MAC covers, so a line can be checked
    against its MAC). A key that is not an entry field is refused (`ValueError`): a sink never
    receives more than the store holds."""
    if not entry.keys() <= _ENTRY_KEYS:
        unknown = sorted(set(entry) - _ENTRY_KEYS)[0]
        raise ValueError(f"not an audit entry field: {unknown!r}")
    if not isinstance(entry.get("details", ""), str):
        raise TypeError("an entry's details go to a sink as the stored JSON text (str)")
    position = int(entry["position"] if "position" in entry else entry["seq"])
    fields = {"position": position}
    fields.update({name: entry[name] for name in _AFTER_POSITION if name in entry})
    return Line("entry", position, str(entry.get("hash", "")), str(entry.get("time", "")),
                orjson.dumps(fields))


def anchor_line(position: int, hash: str, time: str, instance: str) -> Line:
    """An anchor: the chain's head as the store had it at `time`."""
    record = {"record": "anchor", "position": position, "hash": hash, "time": time,
              "instance": instance}
    return Line("anchor", position, hash, time, orjson.dumps(record))


def withdrawn_line(first: int, last: int, time: str, reason: str) -> Line:
    """Entries `first`..`last` written to a sink by a batch whose transaction was then rolled
    back: their lines are not the store's (`check_anchors` ignores them)."""
    record = {"record": "withdrawn", "from": first, "to": last, "time": time, "reason": reason}
    return Line("withdrawn", first, "", time, orjson.dumps(record))


class Sink:
    """One destination. `write` raises `OSError` when the batch did not reach it whole; the
    owning `Sinks` holds `lock` around every call, so a sink sees one caller at a time."""

    kind: ClassVar[str]
    kinds: ClassVar[dict[str, type[Sink]]] = {}

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.lock = threading.Lock()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "kind" in cls.__dict__:  # a sink kind of the settings (not a base, not _Unopened)
            Sink.kinds[cls.kind] = cls

    @classmethod
    def check(cls, spec: SinkSpec) -> None:
        """Raise `OSError` saying why `spec` could not be opened now, opening and creating
        nothing (`appliance doctor`)."""

    def write(self, lines: Sequence[Line]) -> None:
        raise NotImplementedError

    def reopen(self) -> None:
        """Reopen what the sink holds open (a file: after logrotate moved it)."""

    def close(self) -> None:
        """Release what the sink holds."""


class FileSink(Sink):
    """JSON lines appended (O_APPEND) to a file: one `write()` per batch, no fsync (a line is in
    the kernel once `write` returns; a power failure may lose the newest, as for the store's
    query-run entries). A new file is made 0640. A file deleted under it (its link count 0) is
    recreated before the next batch; a moved one is written on until `reopen` (SIGHUP)."""

    kind = "file"

    def __init__(self, spec: SinkSpec, *, owner: tuple[int, int] | None = None) -> None:
        super().__init__(spec)
        self.path = spec.target
        self.owner = owner  # (uid, gid) a new file is given (a verb run as root: the service's)
        self._fd: int | None = None
        self._torn = False  # a write failed part-way: start the next one on a new line
        self._fd = self._open()

    @classmethod
    def check(cls, spec: SinkSpec) -> None:
        directory = _directory(spec.target)
        if os.path.exists(spec.target):
            if not os.access(spec.target, os.W_OK):
                raise PermissionError(errno.EACCES, f"{spec.target} is not writable")
        elif not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"directory {directory} is not writable")

    def _open(self) -> int:
        _directory(self.path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            return os.open(self.path, flags)
        try:
            os.fchmod(fd, 0o640)  # whatever the umask (the unit's is 0077): a log reader group
            if self.owner is not None:
                os.fchown(fd, *self.owner)
        except OSError:
            os.close(fd)
            raise
        return fd

    def write(self, lines: Sequence[Line]) -> None:
        fd = self._fd
        if fd is None or os.fstat(fd).st_nlink == 0:
            self._replace(self._open())
            fd = self._fd
            assert fd is not None
        data = b"".join([line.json + b"\n" for line in lines])
        if self._torn:
            data = b"\n" + data
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except InterruptedError:
                continue
            except OSError:
                self._torn = len(view) != len(data)
                raise
            view = view[written:]
        self._torn = False

    def reopen(self) -> None:
        try:
            fd = self._open()
        except OSError:
            self._replace(None)  # the next batch tries again, and fails if it cannot
            raise
        self._replace(fd)

    def _replace(self, fd: int | None) -> None:
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        self._replace(None)


class _DatagramSink(Sink):
    """A sink that sends one datagram per line to a Unix socket (sent by path every time, so a
    restarted daemon's new socket is found)."""

    default_socket: ClassVar[str]

    def __init__(self, spec: SinkSpec, *, socket_path: str | None = None,
                 timeout: float = SEND_TIMEOUT) -> None:
        super().__init__(spec)
        self.path = socket_path or spec.target or self.default_socket
        _is_socket(self.path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.settimeout(timeout)

    @classmethod
    def check(cls, spec: SinkSpec) -> None:
        _is_socket(spec.target or cls.default_socket)

    def write(self, lines: Sequence[Line]) -> None:
        for line in lines:
            self.send(self.datagram(line))

    def datagram(self, line: Line) -> bytes:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        try:
            self._socket.sendto(data, self.path)
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, "the socket stayed full") from None

    def close(self) -> None:
        self._socket.close()


def _directory(path: str) -> str:
    """The directory of a file sink's path, which must exist (`FileNotFoundError`)."""
    directory = os.path.dirname(path) or "/"
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"directory {directory} does not exist")
    return directory


def _is_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise FileNotFoundError(exc.errno, f"socket {path} is not there") from None
    if not stat.S_ISSOCK(mode):
        raise FileNotFoundError(errno.ENOTSOCK, f"{path} is not a socket")


def journal_field(name: str, value: bytes) -> bytes:
    """One field of journald's native protocol: `NAME=value\\n`, or when the value holds a
    newline the binary-safe form `NAME\\n`, its length as 64-bit little endian, the value, `\\n`."""
    key = name.encode()
    if b"\n" in value:
        return key + b"\n" + len(value).to_bytes(8, "little") + value + b"\n"
    return key + b"=" + value + b"\n"


class JournalSink(_DatagramSink):
    """systemd-journald's native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): one
    datagram per line; one too large for a datagram goes as a sealed memfd passed with
    SCM_RIGHTS, as libsystemd's `sd_journal_send` does."""

    kind = "journal"
    default_socket = JOURNAL_SOCKET

    def datagram(self, line: Line) -> bytes:
        fields = [
            journal_field("MESSAGE", line.json),
            b"PRIORITY=6\n",
            b"SYSLOG_IDENTIFIER=" + IDENTIFIER.encode() + b"\n",
            journal_field("APPLIANCE_AUDIT_RECORD", line.record.encode()),
            journal_field("APPLIANCE_AUDIT_POSITION", str(line.position).encode()),
        ]
        if line.hash:
            fields.append(journal_field("APPLIANCE_AUDIT_HASH", line.hash.encode()))
        fields.append(journal_field("APPLIANCE_AUDIT_JSON", line.json))
        return b"".join(fields)

    def send(self, data: bytes) -> None:
        try:
            super().send(data)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("appliance-audit", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            self._socket.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)


class SyslogSink(_DatagramSink):
    """RFC 5424 messages over a Unix datagram socket (`/dev/log`, or `syslog:/path`): facility
    authpriv, APP-NAME appliance-audit, MSGID the record (entry, anchor, withdrawn), no
    structured data, the JSON line as MSG. Forwarding to a remote collector is the local
    daemon's job (rsyslog, syslog-ng, journald)."""

    kind = "syslog"
    default_socket = SYSLOG_SOCKET

    def __init__(self, spec: SinkSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        host = socket.gethostname().split(".")[0]
        printable = host and all(33 <= ord(char) <= 126 for char in host)
        self._header = f"{host if printable else '-'} {IDENTIFIER} {os.getpid()} ".encode()

    def datagram(self, line: Line) -> bytes:
        stamp = (line.time or "-").encode()
        return (b"<%d>1 " % SYSLOG_PRI + stamp + b" " + self._header + line.record.encode()
                + b" - " + line.json)


class Sinks:
    """The configured sinks of a process. `deliver` and `anchor` are thread-safe (each sink has
    its lock); `deliver` raises `SinkFailed` when a required sink did not take the batch.

    Deferred (`open_sinks(..., deferred=True)`): nothing is opened until the first line is
    written; then every sink is, as at a start (`ConfigError` for a required one that cannot
    be, raised by that `deliver`, and again by the next until it can: the entries are never
    written without it)."""

    def __init__(self, sinks: Sequence[Sink], *, clock: Any = time.monotonic,
                 deferred: Callable[[], Sequence[Sink]] | None = None) -> None:
        self.sinks = tuple(sinks)
        self._clock = clock
        self._failing: dict[str, list[float]] = {}  # optional sink → [last logged, unlogged]
        self._deferred = deferred  # opens them at the first line (then None)
        self._opening = threading.Lock()

    def __bool__(self) -> bool:
        """Whether any sink is configured (opened or not): entries must go through `deliver`."""
        return bool(self.sinks) or self._deferred is not None

    @property
    def opened(self) -> bool:
        """False while deferred and no line has been written yet."""
        return self._deferred is None

    def _open(self) -> None:
        if self._deferred is None:
            return
        with self._opening:
            if self._deferred is not None:
                self.sinks = tuple(self._deferred())  # ConfigError: stays deferred
                self._deferred = None

    def deliver(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Write `entries` (rows of the store, in position order) to every sink, one line each.
        Call it inside the store's write step, before commit; if it raises `SinkFailed`, roll
        back (the sinks that did take the batch are told so by a `withdrawn` line). If the
        commit fails afterwards, call `withdraw`. Deferred sinks are opened first (a required
        one that cannot be: `ConfigError`, and nothing was written anywhere)."""
        if not self or not entries:
            return
        self._open()
        lines = [entry_line(entry) for entry in entries]
        taken = self._write(lines)
        failed = [sink.name for sink in self.sinks if sink.spec.required and sink not in taken]
        if failed:
            self._withdraw(taken, lines, "a required sink failed")
            raise SinkFailed(failed)

    def withdraw(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """The transaction that `deliver` wrote `entries` for was rolled back: say so to every
        sink, so that their lines are not mistaken for the store's. Never raises."""
        if self.sinks and entries:
            lines = [entry_line(entry) for entry in entries]
            self._withdraw(self.sinks, lines, "the store's commit failed")

    def anchor(self, position: int, hash: str, time: str, instance: str) -> list[str]:
        """Write an anchor to every sink; the names of those it did not reach (never raises: an
        anchor has no transaction to roll back)."""
        line = anchor_line(position, hash, time, instance)
        try:
            self._open()
        except ConfigError as exc:
            log.error("audit sinks cannot be opened", extra={"error": exc.message})
            return ["audit.sinks"]
        taken = self._write([line])
        return [sink.name for sink in self.sinks if sink not in taken]

    def reopen(self) -> None:
        """Reopen every file sink (after logrotate moved the file). A sink that cannot be
        reopened is logged; its next batch tries again and fails if it still cannot."""
        for sink in self.sinks:
            with sink.lock:
                try:
                    sink.reopen()
                except OSError as exc:
                    log.error("audit sink cannot be reopened",
                              extra={"sink": sink.name, "error": _reason(exc)})

    def close(self) -> None:
        for sink in self.sinks:
            with sink.lock:
                sink.close()

    def _write(self, lines: Sequence[Line]) -> tuple[Sink, ...]:
        taken = []
        for sink in self.sinks:
            with sink.lock:
                try:
                    sink.write(lines)
                except OSError as exc:
                    self._failed(sink, len(lines), exc)
                    continue
                taken.append(sink)
                metrics.audit_sink_written(sink.name, len(lines))
                if self._failing.pop(sink.name, None) is not None:
                    log.warning("audit sink writes again", extra={"sink": sink.name})
        return tuple(taken)

    def _withdraw(self, sinks: Sequence[Sink], lines: Sequence[Line], reason: str) -> None:
        entries = [line for line in lines if line.record == "entry"]
        if not entries or not sinks:
            return
        line = withdrawn_line(entries[0].position, entries[-1].position,
                              _utc_now(), reason)
        for sink in sinks:
            with sink.lock:
                try:
                    sink.write([line])
                except OSError as exc:
                    self._failed(sink, 1, exc)

    def _failed(self, sink: Sink, count: int, exc: OSError) -> None:
        metrics.audit_sink_failed(sink.name, count)
        if sink.spec.required:  # the caller's transaction fails: one line per failed batch
            log.error("audit sink failed", extra={"sink": sink.name, "required": True,
                                                  "entries": count, "error": _reason(exc)})
            return
        now = self._clock()
        state = self._failing.get(sink.name)
        if state is None or now - state[0] >= LOG_EVERY:
            unlogged = int(state[1]) if state else 0
            self._failing[sink.name] = [now, 0]
            log.warning("audit sink failed", extra={
                "sink": sink.name, "required": False, "entries": count + unlogged,
                "error": _reason(exc), "next_line_in_seconds": LOG_EVERY})
        else:
            state[1] += count


def open_sinks(specs: Sequence[SinkSpec], *,
               socket_paths: Mapping[str, str] | None = None,
               owner: tuple[int, int] | None = None, deferred: bool = False) -> Sinks:
    """Open every sink of `[audit] sinks`. A required sink that cannot be opened refuses the
    start (`ConfigError` naming `audit.sinks` and the sink); an optional one is logged and tried
    again at each batch. `socket_paths` (kind → path) replaces the default sockets (tests);
    `owner` (uid, gid) is given to every file a file sink creates. `deferred`: open them at the
    first line written instead (a process that may write no entry: a read-only CLI verb), with
    the same refusal then."""
    if deferred and specs:
        return Sinks((), deferred=lambda: _open_all(specs, socket_paths or {}, owner))
    return Sinks(_open_all(specs, socket_paths or {}, owner))


def _open_all(specs: Sequence[SinkSpec], socket_paths: Mapping[str, str],
              owner: tuple[int, int] | None) -> list[Sink]:
    opened: list[Sink] = []
    for spec in specs:
        try:
            opened.append(_open_sink(spec, socket_paths, owner))
        except OSError as exc:
            if spec.required:
                for sink in opened:
                    sink.close()
                raise ConfigError("audit.sinks", f"{spec.name} cannot be opened: "
                                  f"{_reason(exc)}") from None
            log.warning("optional audit sink cannot be opened; entries go to the others",
                        extra={"sink": spec.name, "error": _reason(exc)})
            opened.append(_Unopened(spec, socket_paths, owner))
    return opened


def probe(spec: SinkSpec) -> str | None:
    """Why the sink of `spec` could not be opened now, or None; opens and creates nothing (for
    `appliance doctor`: a read-only verb no longer opens the sinks, so none finds out)."""
    try:
        Sink.kinds[spec.kind].check(spec)
    except OSError as exc:
        return _reason(exc)
    return None


def _open_sink(spec: SinkSpec, socket_paths: Mapping[str, str],
               owner: tuple[int, int] | None = None) -> Sink:
    cls = Sink.kinds[spec.kind]
    if issubclass(cls, _DatagramSink):
        return cls(spec, socket_path=socket_paths.get(spec.kind))
    if issubclass(cls, FileSink):
        return cls(spec, owner=owner)
    return cls(spec)


class _Unopened(Sink):
    """An optional sink that could not be opened at start: each batch tries to open it (at most
    once a second) and then writes through it."""

    kind = "unopened"

    def __init__(self, spec: SinkSpec, socket_paths: Mapping[str, str],
                 owner: tuple[int, int] | None = None) -> None:
        super().__init__(spec)
        self._socket_paths = socket_paths
        self._owner = owner
        self._inner: Sink | None = None
        self._tried = time.monotonic()

    def write(self, lines: Sequence[Line]) -> None:
        if self._inner is None:
            if time.monotonic() - self._tried < 1.0:
                raise OSError(errno.ENOENT, "not opened")
            self._tried = time.monotonic()
            self._inner = _open_sink(self.spec, self._socket_paths, self._owner)
        self._inner.write(lines)

    def reopen(self) -> None:
        if self._inner is not None:
            self._inner.reopen()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def _reason(exc: OSError) -> str:
    """What went wrong, without anything of an entry: the errno's name and text, or the
    sink's own message (which names only paths of the settings)."""
    if exc.filename is None and exc.strerror and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{exc.strerror} ({name})"
    return exc.strerror or type(exc).__name__


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
