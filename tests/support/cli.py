"""The CLI run in this process: `appliance.cli.main(argv)` with its own environment, working
directory, stdin, stdout and stderr, and everything it changes in the process put back after.

Owns `run_verb` for tests that check what a verb does, not how a process starts or dies (those
keep `tests.conftest.run_cli`, a process of its own: forked by tests/support/forkserver.py, or a
real `python -m appliance` with APPLIANCE_TEST_REAL_PROCESSES=1; each verb family keeps at least
one such test). A verb run here hashes passwords and makes new scrypt parameters at the
test cost (`tests.support.costs.low_costs`; a test of the real cost runs `run_cli`). Never
used from inside a running event loop (the verbs call `asyncio.run`), and never runs `serve`
(it would block the test), only its `--help`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.conftest import ROOT, clean_env
from tests.support.costs import low_costs

# Loggers whose state a verb changes (logs.configure): restored after each run.
_TOUCHED_LOGGERS = ("aiohttp.access",)


def run_verb(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
             input: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run `appliance ARGS` in this process, as `run_cli` runs it in a subprocess: the same
    environment (`env`, or the test's environment without APPLIANCE_* variables), working
    directory (`cwd`, or the repository) and stdin; the exit code argparse or the verb gives.
    Argon2id and scrypt at the test cost."""
    if args[:1] == ("serve",) and not {"--help", "-h"} & set(args):
        raise ValueError("run_verb does not run `serve`: use tests.conftest.start_server")
    from appliance.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with low_costs(), _process_state(env if env is not None else clean_env(), cwd or ROOT), \
            _standard_streams(io.StringIO(input or ""), stdout, stderr):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["appliance", *args], code, stdout.getvalue(),
                                       stderr.getvalue())


@contextlib.contextmanager
def _process_state(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    """Environment, working directory, umask and logging as a subprocess would start with them;
    the test process's own are put back after, whatever the verb did to them."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_umask = os.umask(0o077)  # read it: a subprocess would inherit it unchanged
    os.umask(saved_umask)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_disabled = {name: logging.getLogger(name).disabled for name in _TOUCHED_LOGGERS}
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        os.umask(saved_umask)
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        for name, disabled in saved_disabled.items():
            logging.getLogger(name).disabled = disabled


@contextlib.contextmanager
def _standard_streams(stdin: io.StringIO, stdout: io.StringIO,
                      stderr: io.StringIO) -> Iterator[None]:
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
