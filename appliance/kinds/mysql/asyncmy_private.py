"""asyncmy's private names, quarantined: what the MySQL engine needs and asyncmy does not offer
publicly. `check()` fails loudly (and `tests/test_mysql_engine.py` calls it) when an asyncmy
release renames or removes one of them.

What each buys (figures: docs/performance.md, "The query proxy on MariaDB" and "Where the
MySQL path's CPU goes"):
- `DialedConnection`: TLS negotiated inside the MySQL protocol (the server's greeting, then an
  SSLRequest) on a socket the egress dialer opened. asyncmy's public `connect(sock=…, ssl=…)`
  starts TLS before any MySQL byte, which no MySQL or MariaDB server speaks; without `ssl` it
  never upgrades. The subclass hands asyncmy the context only after the greeting (so its own
  in-protocol upgrade runs) and refuses a server that does not offer TLS before the password is
  sent. It also never advertises CLIENT_LOCAL_FILES (LOAD DATA LOCAL INFILE).
- `apply_settings`: every answer of a several-statement `query` read at once.
- `reset_session`: COM_RESET_CONNECTION (user variables, temporary tables, session settings,
  prepared statements, open transactions, locks), which asyncmy does not expose, sent in one
  write with the session's settings (one round trip for both), or only their answers read when
  they went with the run's execute.
- `execute`: COM_STMT_PREPARE and COM_STMT_EXECUTE sent in one write on MariaDB (its statement
  id -1 names the statement prepared last on the connection; on MySQL the execute waits for the
  prepare's answer), and the answer read in one of two ways. Without a cursor (a run that is not
  streamed): the reset and the settings go in the execute's write too (one write per run on
  MariaDB, where there were two, and 1.4 reads instead of 2.6: the engine's CPU per run fell
  from 98 to 80 µs, the appliance's per request by about a tenth; the writes were the engine's
  largest cost in a profile under bench/proxy_mysql.py); rows as the server sends them,
  decoded by asyncmy's own binary-row reader, at most a given number kept (asyncmy's
  `PreparedStatement.execute` keeps them all). With a read-only cursor (a streamed run):
  COM_STMT_FETCH n rows at a time, the server keeping the rest.

Owns those uses of private names. Never logs, and never builds SQL text from a value.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from typing import Any, Final

from asyncmy import errors as asyncmy_errors
from asyncmy.connection import Connection, MySQLResult
from asyncmy.constants.CLIENT import LOCAL_FILES
from asyncmy.constants.CLIENT import SSL as CLIENT_SSL
from asyncmy.protocol import pack_binary_params, parse_binary_rows_from_buffer

COM_QUERY: Final = 0x03
COM_STMT_PREPARE: Final = 0x16
COM_STMT_EXECUTE: Final = 0x17
COM_STMT_FETCH: Final = 0x1C
COM_RESET_CONNECTION: Final = 0x1F
CURSOR_TYPE_READ_ONLY: Final = 0x01
SERVER_STATUS_CURSOR_EXISTS: Final = 0x40
SERVER_STATUS_LAST_ROW_SENT: Final = 0x80
LAST_PREPARED: Final = 0xFFFFFFFF  # MariaDB: the statement prepared last on this connection
_MAX_PAYLOAD: Final = 2**24 - 2  # a command byte and this much fit in one protocol packet
_UNSIGNED: Final = 32  # a column definition's UNSIGNED flag

# The private names used here, checked by `check()`.
_CONNECTION_NAMES: Final = ("_get_server_information", "_execute_command", "_read_ok_packet",
                            "_read_query_result", "_write_bytes", "read_packet", "_ssl_context",
                            "_client_flag", "server_capabilities")
_RESULT_NAMES: Final = ("_get_descriptions", "_read_binary_rowdata_packet",
                        "_check_packet_is_eof", "_read_ok_packet")


class ServerRefusedTLS(Exception):
    """TLS was asked for and the server's greeting does not offer it (nothing was sent)."""


_Connection: Any = Connection  # its stubs name neither the private methods nor the flags


class DialedConnection(_Connection):  # type: ignore[misc]  # subclass of Any: untyped Cython
    """An asyncmy connection over a socket from the egress dialer, upgraded to TLS in the MySQL
    protocol when `tls` is a context."""

    settings = ""  # the session's settings (fixed text), set after connecting and every reset
    mariadb = False  # the server is MariaDB: a prepare and its execute go in one write
    reset_sent = False  # the reset and the settings went with the run: their answers are due

    def __init__(self, *, tls: ssl.SSLContext | None, **kwargs: Any) -> None:
        super().__init__(local_infile=False, ssl=None, **kwargs)
        self._appliance_tls = tls
        self._client_flag &= ~LOCAL_FILES

    def is_closed(self) -> bool:
        return not self.connected

    def terminate(self) -> None:
        """Close the socket at once (no COM_QUIT)."""
        self.close()

    async def _get_server_information(self) -> None:
        await super()._get_server_information()
        if self._appliance_tls is not None:
            if not self.server_capabilities & CLIENT_SSL:
                raise ServerRefusedTLS()
            # From here asyncmy's own in-protocol upgrade (SSLRequest, then the handshake on
            # the same socket) runs in `_request_authentication`, before any credential.
            self._ssl_context = self._appliance_tls
            self._client_flag |= CLIENT_SSL
        self._client_flag &= ~LOCAL_FILES


async def reset_session(conn: Any, setup: str) -> None:
    """COM_RESET_CONNECTION, then `setup` (the session's settings, fixed text), sent in one write
    (unless they went with the run: `execute(reset=…)`) and answered in order; raises asyncmy's
    error when the server refuses either (the connection is then out of step: the caller closes
    it)."""
    if conn.reset_sent:
        conn.reset_sent = False
    else:
        await _send(conn, *_reset_commands(conn, setup))
    conn._next_seq_id = 1
    await conn._read_ok_packet()
    conn._next_seq_id = 1
    await conn._read_query_result()
    while conn._result is not None and conn._result.has_next:
        await conn.next_result()


async def apply_settings(conn: Any, setup: str) -> None:
    """Run `setup` (several statements of fixed text) and read every answer (asyncmy's public
    `query` reads the first only)."""
    await conn.query(setup)
    while conn._result is not None and conn._result.has_next:
        await conn.next_result()


class Execution:
    """One prepared statement executed with its values: the columns, then the rows, read without
    a cursor (`read`) or through a read-only server-side cursor (`fetch`)."""

    def __init__(self, conn: Any, statement_id: int, cursor: bool) -> None:
        self._conn = conn
        self._statement_id = statement_id
        self._cursor = cursor
        self._result: Any = None
        self._specs: tuple[Any, ...] = ()
        self.columns: list[str] = []
        self.fields: list[Any] = []  # asyncmy's column descriptions (type_code, flags)
        self.done = True  # no row left to read
        self.complete = True  # the answer has been read to its end (the connection is in step)
        self.affected_rows = 0

    async def _read_answer(self) -> None:
        """The execute's answer up to the rows: an OK (no result set), or the columns."""
        conn = self._conn
        result: Any = MySQLResult(conn)
        first = await conn.read_packet()
        if first.is_ok_packet():
            result._read_ok_packet(first)
            self.affected_rows = int(result.affected_rows or 0)
            return
        result.field_count = first.read_length_encoded_integer()
        await result._get_descriptions()
        self._result = result
        self.columns = [str(d[0]) for d in result.description]
        self.fields = list(result.fields)
        # asyncmy's binary-row specification, from its public column descriptions and
        # converters (the same tuple `_get_descriptions` builds for itself).
        self._specs = tuple((field.type_code, bool(field.flags & _UNSIGNED), *converter)
                            for field, converter in zip(result.fields, result.converters,
                                                        strict=True))
        self.done = self.complete = False
        if self._cursor:
            status = SERVER_STATUS_CURSOR_EXISTS
            if conn._deprecate_eof:  # the metadata's end: an OK packet with the cursor's status
                end = await conn.read_packet()
                result._check_packet_is_eof(end)
                status = result.server_status
            self.complete = True  # the rest comes on COM_STMT_FETCH
            self.done = not status & SERVER_STATUS_CURSOR_EXISTS

    async def read(self, limit: int) -> list[Any]:
        """Without a cursor: the rows as the server sends them, until the last (then `done` and
        `complete`), at most `limit` of them: once more have come, `done` but not `complete`
        (the server is still sending: the connection must be closed)."""
        if self.done:
            return []
        conn, result, specs = self._conn, self._result, self._specs
        proto = conn._proto
        rows: list[Any] = []
        while True:
            # Every whole row already in the receive buffer, in asyncmy's C loop.
            pos, seq = parse_binary_rows_from_buffer(
                proto.buffer, proto.pos, proto.length, specs, conn._next_seq_id, rows,
                conn._deprecate_eof)
            proto.pos, conn._next_seq_id = pos, seq
            if len(rows) > limit:
                self.done = True
                return rows[:limit]
            packet = await conn.read_packet()
            if result._check_packet_is_eof(packet):
                self.done = True
                # More result sets (a procedure's) would put the connection out of step.
                self.complete = not result.has_next
                return rows
            rows.append(packet.read_binary_row(specs))

    async def fetch(self, n: int) -> tuple[Any, ...]:
        """With a cursor: up to `n` more rows (binary protocol, decoded by asyncmy); `done`
        once the server has sent the last."""
        if self.done:
            return ()
        conn, result = self._conn, self._result
        await conn._execute_command(COM_STMT_FETCH, struct.pack("<II", self._statement_id, n))
        result.connection = conn
        result.server_status = 0
        await result._read_binary_rowdata_packet()
        rows: tuple[Any, ...] = result.rows or ()
        if result.server_status & SERVER_STATUS_LAST_ROW_SENT or len(rows) < n:
            self.done = True
        return rows


async def execute(conn: Any, sql: str, values: tuple[Any, ...], *, cursor: bool,
                  pipeline: bool, reset: str | None = None) -> Execution:
    """COM_STMT_PREPARE `sql`, then COM_STMT_EXECUTE it with `values` bound (the binary protocol:
    no value is ever in SQL text), with a read-only cursor or without; `pipeline` (MariaDB): both
    in one write, the execute naming the statement prepared last. With `reset` (the session's
    settings; not with a cursor, which the reset would close), COM_RESET_CONNECTION and the
    settings follow the execute in its write: the server resets the session as soon as the
    statement ends, and `reset_session` reads their answers. The statement is deallocated by
    the connection's reset."""
    flags = CURSOR_TYPE_READ_ONLY if cursor else 0
    params = pack_binary_params(values, conn._encoding) if values else b""
    prepare = (COM_STMT_PREPARE, sql.encode(conn._encoding))
    after = _reset_commands(conn, reset) if reset is not None and not cursor else ()
    if pipeline:
        await _send(conn, prepare,
                    (COM_STMT_EXECUTE, struct.pack("<IBI", LAST_PREPARED, flags, 1) + params),
                    *after)
        conn.reset_sent = bool(after)
    else:
        await _send(conn, prepare)
    try:
        statement_id, parameter_count = await _read_prepared(conn)
    except asyncmy_errors.Error:
        if pipeline:  # the execute's own answer follows: an error (no statement was prepared)
            conn._next_seq_id = 1
            with contextlib.suppress(asyncmy_errors.Error):
                await conn.read_packet()
                conn.close()  # not an error: out of step, closed
        raise
    if parameter_count != len(values):  # the binding's count is the server's: never differs
        conn.close()
        raise asyncmy_errors.ProgrammingError(
            0, f"expected {parameter_count} values, got {len(values)}")
    if pipeline:
        conn._next_seq_id = 1
    else:
        await _send(conn, (COM_STMT_EXECUTE, struct.pack("<IBI", statement_id, flags, 1) + params),
                    *after)
        conn.reset_sent = bool(after)
    run = Execution(conn, statement_id, cursor)
    await run._read_answer()
    return run


def _reset_commands(conn: Any, setup: str) -> tuple[tuple[int, bytes], ...]:
    """COM_RESET_CONNECTION, then `setup` (the session's settings, fixed text)."""
    return (COM_RESET_CONNECTION, b""), (COM_QUERY, setup.encode(conn._encoding))


async def _send(conn: Any, *commands: tuple[int, bytes]) -> None:
    """Send `commands` in one write (one system call, one TCP segment on the loopback: each
    write costs the sender tens of microseconds there); their answers follow in order, each
    counting its packets from 1. A command too large for one protocol packet goes through
    asyncmy's own writer, which splits it."""
    if any(len(payload) > _MAX_PAYLOAD for _, payload in commands):
        for command, payload in commands:
            await conn._execute_command(command, payload)
    else:
        if not conn._connected:
            raise asyncmy_errors.InterfaceError(0, "Not connected")
        conn._write_bytes(b"".join(struct.pack("<I", len(payload) + 1)[:3] + b"\x00"
                                   + bytes((command,)) + payload
                                   for command, payload in commands))
    conn._next_seq_id = 1


async def _read_prepared(conn: Any) -> tuple[int, int]:
    """COM_STMT_PREPARE's answer: the statement's id and its number of parameters (the
    parameter and column definitions are skipped: the execute's answer has the columns)."""
    packet = await conn.read_packet()
    packet.read_uint8()  # status: 0x00
    statement_id = packet.read_uint32()
    columns = packet.read_uint16()
    parameters = packet.read_uint16()
    for count in (parameters, columns):
        for _ in range(count):
            await conn.read_packet()
        if count and not conn._deprecate_eof:
            await conn.read_packet()  # EOF
    return statement_id, parameters


def check() -> None:
    """Raise RuntimeError when this asyncmy lacks a private name used here."""
    missing = [f"Connection.{name}" for name in _CONNECTION_NAMES
               if name not in ("_ssl_context", "_client_flag", "server_capabilities")
               and not hasattr(Connection, name)]
    missing += [f"MySQLResult.{name}" for name in _RESULT_NAMES
                if not hasattr(MySQLResult, name)]
    probe = _Connection(host="127.0.0.1", port=1, user="x")
    missing += [f"Connection().{name}" for name in ("_ssl_context", "_client_flag",
                                                     "_deprecate_eof", "_encoding", "_proto",
                                                     "_next_seq_id", "_connected")
                if not hasattr(probe, name)]
    if not callable(pack_binary_params) or not callable(parse_binary_rows_from_buffer):
        missing.append("asyncmy.protocol's binary packers")  # pragma: no cover
    if missing:
        raise RuntimeError("asyncmy changed: the MySQL engine's private names are gone ("
                           + ", ".join(missing) + "); see kinds/mysql/asyncmy_private.py")
