"""Loopback ports for the servers the tests start (no tests here).

Owns `free_port`: a TCP port on 127.0.0.1 that nothing listened on a moment ago, for a server
that must be told its port before it starts. Never reserves it: the caller binds it at once (or
expects a refused connection on it).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
