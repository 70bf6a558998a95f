"""The fork server (tests/support/forkserver.py) runs `appliance ARGS` as `python -m appliance`
would: a process of its own with the environment, working directory, standard streams and exit
code the test gives or expects, and signals that reach it. The suite's commands go through it,
so what it gets wrong would be wrong in every CLI and serve test."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import clean_env, run_cli, start_server
from tests.support import forkserver


@pytest.fixture(autouse=True)
def _forked() -> None:
    if forkserver.real_processes():
        pytest.skip(f"{forkserver.REAL_PROCESSES}=1: no fork server")


def test_a_command_gets_its_arguments_streams_and_exit_code(tmp_path: Path) -> None:
    done = run_cli("version")
    assert done.returncode == 0 and done.stdout.startswith("appliance "), done
    refused = run_cli("frobnicate")
    assert refused.returncode == 2 and "invalid choice: 'frobnicate'" in refused.stderr
    assert refused.stdout == ""
    # Its own environment and working directory: `init --dev` makes ./.appliance in `cwd`.
    made = run_cli("init", "--dev", cwd=tmp_path, env=clean_env(HOME=str(tmp_path)))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / ".appliance").is_dir()


def test_stdin_is_the_input_given(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = run_cli("init", "--state-dir", str(state), "--admin-password-file", "/dev/stdin",
                   input="correct horse battery staple\n")
    assert made.returncode == 0, made.stderr
    assert "created  admin user 'admin'" in made.stdout
    assert "one-time password" not in made.stdout  # the password came from stdin
    short = run_cli("init", "--state-dir", str(tmp_path / "other"), "--admin-password-file",
                    "/dev/stdin", input="short\n")
    assert short.returncode == 2 and "12" in short.stderr, short


def test_a_server_is_its_own_process_and_a_signal_ends_it(tmp_path: Path) -> None:
    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    try:
        assert isinstance(server.proc, forkserver.ForkedProcess)
        assert server.proc.pid not in (os.getpid(), forkserver.server().process.pid)
        assert Path(f"/proc/{server.proc.pid}/cwd").resolve() == tmp_path.resolve()
        assert server.proc.poll() is None
    finally:
        code = server.stop()
    assert code == 0  # SIGTERM: a clean stop
    killed = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL


def test_a_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli("serve", "--dev", "--listen", "127.0.0.1:0", cwd=tmp_path, timeout=3)
    assert time.monotonic() - started < 15


def test_the_fork_server_runs_no_thread() -> None:
    """A fork copies only the forking thread: another thread's lock held at that moment would
    stay held in the child for ever."""
    pid = forkserver.server().process.pid
    threads = len(os.listdir(f"/proc/{pid}/task"))
    assert threads == 1, threads
