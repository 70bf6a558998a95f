"""`python -m appliance` without starting Python each time: one process per test process that has
imported the appliance once and forks a child for each command a test runs (`tests.conftest`'s
`run_cli` and `start_server`).

A child is a process of its own, as `python -m appliance ARGS` would be: its own pid, the
environment, working directory and standard streams the test gives it, Python's signal
dispositions, the exit code `appliance.cli.main` gives (or the signal that killed it), and the
interpreter's own shutdown (atexit, threads joined, streams flushed). What it does not repeat is
starting the interpreter and importing the appliance: about 0.26 s of CPU saved per `serve` and
0.12 s per short verb on the 2-core test machine (docs/performance.md, "The test suite").

Tests about the interpreter itself start one (`tests/test_startup_imports.py`: `-X importtime`),
and so do the kill-at-random loops, whose timing counts from a cold start
(`tests/test_keys_cli.py`). `APPLIANCE_TEST_REAL_PROCESSES=1` makes every command a real
`python -m appliance` again (`run_cli` and `start_server` check it).

The server only imports, then waits: no thread, event loop or connection is running when it
forks, so a child copies nothing in flight. It reaps its children and reports each exit code;
it exits when the test process closes its end of the socket (or dies).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent.parent
REAL_PROCESSES = "APPLIANCE_TEST_REAL_PROCESSES"
_MESSAGE = 1 << 16  # bytes: a request (argv, environment, working directory) fits


# Read once, at import (tests.conftest imports this module before any test runs): each test then
# runs without the APPLIANCE_* variables of the environment (`_isolated_environment`).
_REAL = os.environ.get(REAL_PROCESSES, "") not in ("", "0")


def real_processes() -> bool:
    """True when the tests should start real interpreters (no fork server)."""
    return _REAL


# -- the server (a process of its own) ----------------------------------------------------------


class _Run(BaseException):
    """Raised in a freshly forked child to leave the server's loop (every frame of it) and run
    the command at the top of the module, as `python -m appliance` runs it."""

    def __init__(self, request: dict[str, Any], fds: list[int]) -> None:
        super().__init__()
        self.request, self.fds = request, fds


def _preload() -> None:
    """Import every module of the appliance (not `appliance.__main__`, which runs the CLI)."""
    import pkgutil

    import appliance

    for module in pkgutil.walk_packages(appliance.__path__, "appliance.",
                                        onerror=lambda name: None):
        if module.name.endswith("__main__"):
            continue
        with contextlib.suppress(Exception):  # a command that needs it will say why itself
            __import__(module.name)


def _serve(control: socket.socket) -> None:
    _preload()
    assert threading.active_count() == 1, "the fork server must not run a thread"
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    control.send(json.dumps({"ready": os.getpid()}).encode())
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                message, fds, _, _ = socket.recv_fds(control, _MESSAGE, 3)
                if not message:
                    return  # the test process closed its end
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (wake_r, wake_w):
                        os.close(fd)
                    control.close()
                    raise _Run(request, fds)
                for fd in fds:
                    os.close(fd)
                control.send(json.dumps({"pid": pid}).encode())
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(control)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(json.dumps({"exited": pid,
                                 "code": os.waitstatus_to_exitcode(status)}).encode())


def _streams(unbuffered: bool) -> None:
    """sys.stdin, stdout and stderr on fds 0, 1 and 2, as the interpreter makes them at start
    (stderr line-buffered; stdout line-buffered on a terminal; both unbuffered with
    PYTHONUNBUFFERED)."""
    encoding, errors = sys.__stdout__.encoding, sys.__stdout__.errors  # type: ignore[union-attr]

    def writer(fd: int, line: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        binary: IO[bytes] = raw if unbuffered else io.BufferedWriter(raw)
        return io.TextIOWrapper(binary, encoding=encoding, errors=errors,
                                line_buffering=line and not unbuffered, write_through=unbuffered)

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=encoding,
        errors=sys.__stdin__.errors if sys.__stdin__ else errors)  # type: ignore[union-attr]
    sys.stdout = sys.__stdout__ = writer(1, os.isatty(1))
    sys.stderr = sys.__stderr__ = writer(2, True)


def _child(run: _Run) -> int:
    """In the forked child: become the command's process and run it; its exit code."""
    request = run.request
    for target, fd in enumerate(run.fds):
        os.dup2(fd, target)
    for fd in set(run.fds) - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    sys.argv = [str(ROOT / "appliance" / "__main__.py"), *request["argv"]]
    _streams(bool(os.environ.get("PYTHONUNBUFFERED")))
    from appliance.cli import main

    return main(request["argv"])


def _main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    try:
        _serve(control)
        return
    except _Run as forked:
        run = forked.with_traceback(None)
    raise SystemExit(_child(run))  # outside the handler: an error of the command chains to nothing


# -- the client (in the test process) ------------------------------------------------------------


class ForkServer:
    """The test process's end: `spawn` a command, learn its exit code (`exit_code`)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.forkserver", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)
        theirs.close()
        self._sock = ours
        self._spawning = threading.Lock()
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._changed = threading.Condition()
        self._gone = False
        threading.Thread(target=self._read, name="forkserver", daemon=True).start()
        ready = self._replies.get(timeout=60)
        if "ready" not in ready:
            raise RuntimeError(f"the fork server did not start: {ready}")

    def _read(self) -> None:
        try:
            while message := self._sock.recv(_MESSAGE):
                reply = json.loads(message)
                if "exited" in reply:
                    with self._changed:
                        self._exits[reply["exited"]] = reply["code"]
                        self._changed.notify_all()
                else:
                    self._replies.put(reply)
        except OSError:
            pass
        with self._changed:
            self._gone = True
            self._changed.notify_all()
        self._replies.put({"gone": True})

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
              fds: tuple[int, int, int]) -> int:
        """Fork a child running `appliance ARGV` with `fds` as its stdin, stdout and stderr;
        its pid."""
        request = json.dumps({"argv": list(argv), "env": dict(env), "cwd": str(cwd)}).encode()
        with self._spawning:
            socket.send_fds(self._sock, [request], list(fds))
            reply = self._replies.get(timeout=60)
        if "pid" not in reply:
            raise RuntimeError("the fork server is gone")
        return int(reply["pid"])

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The child's exit code (negative: the signal that ended it), waiting up to `timeout`
        seconds (None: as long as it takes); None while it runs."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._gone, timeout)
            if pid not in self._exits and self._gone:
                raise RuntimeError("the fork server is gone")
            return self._exits.get(pid)

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


_server: tuple[int, ForkServer] | None = None  # the process it was started for, and it
_server_lock = threading.Lock()


def server() -> ForkServer:
    """This process's fork server, started at its first use."""
    global _server
    with _server_lock:
        if _server is None or _server[0] != os.getpid() or _server[1].process.poll() is not None:
            _server = (os.getpid(), ForkServer())
        return _server[1]


_no_stdin: list[int] = []  # /dev/null, opened once, for a test process without stdin


def _own_stdin() -> int:
    """The test process's stdin, which a child inherits as a subprocess would; /dev/null when
    it has none (a closed fd 0)."""
    try:
        os.fstat(0)
    except OSError:
        if not _no_stdin:
            _no_stdin.append(os.open(os.devnull, os.O_RDONLY))
        return _no_stdin[0]
    return 0


class ForkedProcess:
    """A command from the fork server, handled as a `subprocess.Popen` is: `pid`, `poll`,
    `wait`, `send_signal`, `terminate`, `kill`, `returncode`, text pipes `stdin` and `stdout`
    (those asked for)."""

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                 stdin: int | None = None, stdout: int | IO[Any] | None = None,
                 stderr: int | IO[Any] | None = None) -> None:
        self.args = ["appliance", *args]
        self.returncode: int | None = None
        close_after: list[int] = []  # the child's ends, ours to close once it has them

        def end(spec: int | IO[Any] | None, inherited: int, child_reads: bool
                ) -> tuple[int, IO[str] | None]:
            """The child's file descriptor for one stream, and our end of it (a pipe's)."""
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                ours, theirs = (w, r) if child_reads else (r, w)
                close_after.append(theirs)
                return theirs, open(ours, "w" if child_reads else "r", encoding="utf-8")
            if spec == subprocess.DEVNULL:
                close_after.append(os.open(os.devnull, os.O_RDWR))
                return close_after[-1], None
            if spec is None:
                return inherited, None
            return (spec if isinstance(spec, int) else spec.fileno()), None

        (in_fd, self.stdin), (out_fd, self.stdout), (err_fd, self.stderr) = (
            end(stdin, _own_stdin(), True), end(stdout, 1, False), end(stderr, 2, False))
        fds = (in_fd, out_fd, err_fd)
        try:
            self._server = server()
            self.pid = self._server.spawn(args, env=env, cwd=cwd, fds=fds)
        finally:
            for fd in close_after:
                os.close(fd)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a pid that may have been given to another process
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, -m, appliance, *args], capture_output=True, text=True, …)`
    through the fork server: stdin is `input` (else the test process's own), and a command still
    running after `timeout` seconds is killed (`subprocess.TimeoutExpired`, with what it wrote)."""
    child = ForkedProcess(args, env=env, cwd=cwd,
                          stdin=subprocess.PIPE if input is not None else None,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: dict[str, str] = {}

    def drain(name: str, stream: IO[str]) -> None:
        with stream:
            out[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(name, stream), daemon=True)
               for name, stream in (("stdout", child.stdout), ("stderr", child.stderr))
               if stream is not None]
    for reader in readers:
        reader.start()
    if child.stdin is not None:
        with contextlib.suppress(BrokenPipeError), child.stdin:
            child.stdin.write(input or "")
    try:
        code = child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        for reader in readers:
            reader.join(5)
        raise subprocess.TimeoutExpired(child.args, timeout, out.get("stdout"),
                                        out.get("stderr")) from None
    for reader in readers:
        reader.join()
    return subprocess.CompletedProcess(child.args, code, out.get("stdout", ""),
                                       out.get("stderr", ""))


if __name__ == "__main__":
    _main()
