"""Capturing the process's log lines as the appliance writes them (JSON), at DEBUG, so a test can
search them for a value that must never appear."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from appliance.logs import JSONFormatter


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
