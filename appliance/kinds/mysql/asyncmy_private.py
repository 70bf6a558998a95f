"""asyncmy's private names, quarantined: what the MySQL engine needs and asyncmy 0.2.18 does not
offer publicly. `check()` fails loudly (and `tests/test_mysql_engine.py` calls it) when an
asyncmy release renames or removes one of them.

What each buys:
- `DialedConnection`: TLS negotiated inside the MySQL protocol (the server's greeting, then an
  SSLRequest) on a socket the egress dialer opened. asyncmy's public `connect(sock=…, ssl=…)`
  starts TLS before any MySQL byte, which no MySQL or MariaDB server speaks; without `ssl` it
  never upgrades. The subclass hands asyncmy the context only after the greeting (so its own
  in-protocol upgrade runs) and refuses a server that does not offer TLS before the password is
  sent. It also never advertises CLIENT_LOCAL_FILES (LOAD DATA LOCAL INFILE).
- `apply_settings`: every answer of a several-statement `query` read at once.
- `reset_session`: COM_RESET_CONNECTION (user variables, temporary tables, session settings,
  prepared statements, open transactions, locks), which asyncmy does not expose.
- `ServerCursor`: COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY, then COM_STMT_FETCH n rows at a
  time: `PreparedStatement.execute` reads a whole result into memory, this reads a batch per
  round trip (the server keeps the rest). Rows are decoded by asyncmy's own binary-row reader.

Owns those uses of private names. Never logs, and never builds SQL text from a value.
"""

from __future__ import annotations

import ssl
import struct
from typing import Any, Final

from asyncmy import errors as asyncmy_errors
from asyncmy.connection import Connection, MySQLResult
from asyncmy.constants.CLIENT import LOCAL_FILES
from asyncmy.constants.CLIENT import SSL as CLIENT_SSL
from asyncmy.protocol import pack_binary_params

COM_STMT_EXECUTE: Final = 0x17
COM_STMT_FETCH: Final = 0x1C
COM_RESET_CONNECTION: Final = 0x1F
CURSOR_TYPE_READ_ONLY: Final = 0x01
SERVER_STATUS_CURSOR_EXISTS: Final = 0x40
SERVER_STATUS_LAST_ROW_SENT: Final = 0x80

# The private names used here, checked by `check()`.
_CONNECTION_NAMES: Final = ("_get_server_information", "_execute_command", "_read_ok_packet",
                            "read_packet", "_ssl_context", "_client_flag", "server_capabilities")
_RESULT_NAMES: Final = ("_get_descriptions", "_read_binary_rowdata_packet",
                        "_check_packet_is_eof")


class ServerRefusedTLS(Exception):
    """TLS was asked for and the server's greeting does not offer it (nothing was sent)."""


_Connection: Any = Connection  # its stubs name neither the private methods nor the flags


class DialedConnection(_Connection):  # type: ignore[misc]  # subclass of Any: untyped Cython
    """An asyncmy connection over a socket from the egress dialer, upgraded to TLS in the MySQL
    protocol when `tls` is a context."""

    settings = ""  # the session's settings (fixed text), set after connecting and every reset

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


async def reset_session(conn: Any) -> None:
    """COM_RESET_CONNECTION; raises asyncmy's error when the server refuses it."""
    await conn._execute_command(COM_RESET_CONNECTION, b"")
    await conn._read_ok_packet()


async def apply_settings(conn: Any, setup: str) -> None:
    """Run `setup` (several statements of fixed text) and read every answer (asyncmy's public
    `query` reads the first only)."""
    await conn.query(setup)
    while conn._result is not None and conn._result.has_next:
        await conn.next_result()


class ServerCursor:
    """A read-only server-side cursor over one prepared statement's result."""

    def __init__(self, conn: Any, statement: Any) -> None:
        self._conn = conn
        self._statement = statement
        self._result: Any = None
        self.columns: list[str] = []
        self.fields: list[Any] = []  # asyncmy's column descriptions (type_code, flags)
        self.done = True
        self.affected_rows = 0

    async def execute(self, args: tuple[Any, ...]) -> None:
        """COM_STMT_EXECUTE with a cursor; reads the columns (or the OK of a statement without
        a result)."""
        conn = self._conn
        statement = self._statement
        if len(args) != statement.parameter_count:
            raise asyncmy_errors.ProgrammingError(
                0, f"expected {statement.parameter_count} values, got {len(args)}")
        payload = (struct.pack("<IBI", statement._statement_id, CURSOR_TYPE_READ_ONLY, 1)
                   + (pack_binary_params(args, conn._encoding) if args else b""))
        await conn._execute_command(COM_STMT_EXECUTE, payload)
        result: Any = MySQLResult(conn)
        first = await conn.read_packet()
        if first.is_ok_packet():
            result._read_ok_packet(first)
            self.affected_rows = int(result.affected_rows or 0)
            self.done = True
            return
        result.field_count = first.read_length_encoded_integer()
        await result._get_descriptions()
        status = SERVER_STATUS_CURSOR_EXISTS
        if conn._deprecate_eof:  # the metadata's end: an OK packet with the cursor's status
            end = await conn.read_packet()
            result._check_packet_is_eof(end)
            status = result.server_status
        self._result = result
        self.columns = [str(d[0]) for d in result.description]
        self.fields = list(result.fields)
        self.done = not status & SERVER_STATUS_CURSOR_EXISTS

    async def fetch(self, n: int) -> tuple[Any, ...]:
        """Up to `n` more rows (binary protocol, decoded by asyncmy); `done` once the server
        has sent the last."""
        if self.done:
            return ()
        conn, result = self._conn, self._result
        await conn._execute_command(COM_STMT_FETCH,
                                    struct.pack("<II", self._statement._statement_id, n))
        result.connection = conn
        result.server_status = 0
        await result._read_binary_rowdata_packet()
        rows: tuple[Any, ...] = result.rows or ()
        if result.server_status & SERVER_STATUS_LAST_ROW_SENT or len(rows) < n:
            self.done = True
        return rows


def check() -> None:
    """Raise RuntimeError when this asyncmy lacks a private name used here."""
    missing = [f"Connection.{name}" for name in _CONNECTION_NAMES
               if name not in ("_ssl_context", "_client_flag", "server_capabilities")
               and not hasattr(Connection, name)]
    missing += [f"MySQLResult.{name}" for name in _RESULT_NAMES
                if not hasattr(MySQLResult, name)]
    probe = _Connection(host="127.0.0.1", port=1, user="x")
    missing += [f"Connection().{name}" for name in ("_ssl_context", "_client_flag",
                                                     "_deprecate_eof", "_encoding")
                if not hasattr(probe, name)]
    if not hasattr(struct, "pack") or not callable(pack_binary_params):  # pragma: no cover
        missing.append("asyncmy.protocol.pack_binary_params")
    if missing:
        raise RuntimeError("asyncmy changed: the MySQL engine's private names are gone ("
                           + ", ".join(missing) + "); see kinds/mysql/asyncmy_private.py")
