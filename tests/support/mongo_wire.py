"""A server that speaks the MongoDB wire protocol (OP_QUERY, OP_MSG with document sequences), for
tests: no real MongoDB can be installed here. Subclasses answer commands in `reply`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import struct
from typing import Any

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013


class WireServer:
    """Listens on 127.0.0.1; records each connection's peer address. `reply` answers hello and
    ping-like commands; override it for more."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._connection_id = 0

    def hello(self) -> dict[str, Any]:
        self._connection_id += 1
        return {
            "helloOk": True, "ismaster": True, "isWritablePrimary": True,
            "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000, "localTime": dt.datetime.now(dt.UTC),
            "logicalSessionTimeoutMinutes": 30, "connectionId": self._connection_id,
            "minWireVersion": 0, "maxWireVersion": 21, "readOnly": False, "ok": 1.0,
        }

    def reply(self, command: dict[str, Any], sequences: dict[str, list[Any]]) -> dict[str, Any]:
        if next(iter(command)).lower() in ("hello", "ismaster"):
            return self.hello()
        return {"ok": 1.0}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        try:
            while True:
                length, request_id, _, opcode = struct.unpack("<iiii",
                                                               await reader.readexactly(16))
                body = await reader.readexactly(length - 16)
                if opcode == OP_QUERY:
                    name_end = body.index(b"\x00", 4)
                    document = bson.decode(body[name_end + 9:])
                    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(
                        self.reply(document, {}))
                    reply_op = OP_REPLY
                elif opcode == OP_MSG:
                    document, sequences = _sections(body)
                    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(
                        self.reply(document, sequences))
                    reply_op = OP_MSG
                else:
                    return
                writer.write(struct.pack("<iiii", 16 + len(payload), 0, request_id, reply_op)
                             + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> WireServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


def _sections(body: bytes) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """An OP_MSG body (after its flags): the command document and any document sequences."""
    position, document, sequences = 4, {}, {}
    while position < len(body):
        kind = body[position]
        size = struct.unpack("<i", body[position + 1:position + 5])[0]
        if kind == 0:
            document = bson.decode(body[position + 1:position + 1 + size])
        else:
            section = body[position + 5:position + 1 + size]
            name_end = section.index(b"\x00")
            sequences[section[:name_end].decode()] = bson.decode_all(section[name_end + 1:])
        position += 1 + size
    return document, sequences
