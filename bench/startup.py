"""Start-up CPU: user+sys seconds of one `appliance serve` (start, one GET /healthz, SIGTERM) and of
CLI verbs, each a real `python -m appliance` process, for this tree and (`--against DIR`) another
checkout measured in the same run, alternating. Prints medians; never asserts.

Run: .venv/bin/python bench/startup.py [--runs 5] [--against /path/to/other/checkout]

The state is prepared once per tree as the tests prepare theirs (`tests.support.app.prepare`:
cheap scrypt parameters, test password hashing, three users and their tokens); `serve`'s first
start (the local CA) is left out. Both trees' bytecode is compiled first, as `make test` does.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERBS: tuple[tuple[str, ...], ...] = (("users", "list"), ("tokens", "list"), ("audit", "verify"),
                                      ("doctor",))


def env_for(tree: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("APPLIANCE_")
           and k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")}
    out["PYTHONPATH"] = str(tree)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def cpu_of(proc: subprocess.Popen[str]) -> float:
    """The user+sys CPU seconds of a child (and the children it waited for), once it ends."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def serve_once(tree: Path, state: Path) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--state-dir", str(state),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env_for(tree),
        cwd=state.parent)
    assert proc.stdout is not None
    url = ca = None
    for line in proc.stdout:
        if match := re.search(r"listening on (https://\S+)", line):
            url = match.group(1)
        if match := re.search(r"Local CA certificate: (\S+)", line):
            ca = match.group(1)
        if line.startswith("Try:"):
            break
    if url is None:
        proc.kill()
        raise SystemExit(f"serve did not start in {tree}")
    context = ssl.create_default_context(cafile=ca)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", context=context, timeout=5) as answer:
                answer.read()
            break
        except OSError:
            time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.stdout.close()
    return cpu_of(proc)


def verb_once(tree: Path, state: Path, args: tuple[str, ...]) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "appliance", *args, "--state-dir", str(state)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            env=env_for(tree), cwd=state.parent)
    return cpu_of(proc)


def version_once(tree: Path) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "--version"],
                            stdout=subprocess.DEVNULL, text=True, env=env_for(tree))
    return cpu_of(proc)


def prepare(tree: Path, state: Path) -> None:
    """A state directory as the tests make theirs, by that tree's own code."""
    script = ("import asyncio, sys; from pathlib import Path; from tests.support import app; "
              "asyncio.run(app.prepare(Path(sys.argv[1]), tokens=True))")
    env = env_for(tree)
    env["PYTHONPATH"] = f"{tree}{os.pathsep}{ROOT}"  # tests.support from this checkout
    subprocess.run([sys.executable, "-c", script, str(state)], check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout, measured alongside")
    args = parser.parse_args()
    trees = [ROOT] + ([args.against.resolve()] if args.against else [])
    with tempfile.TemporaryDirectory() as tmp:
        cases: dict[tuple[str, Path], Callable[[], float]] = {}
        for i, tree in enumerate(trees):
            compileall.compile_dir(tree / "appliance", quiet=1)
            state = Path(tmp) / f"tree{i}" / "state"
            state.parent.mkdir()
            prepare(tree, state)
            serve_once(tree, state)  # the first start makes the local CA: not measured
            cases[("serve", tree)] = lambda tree=tree, state=state: serve_once(tree, state)
            for verb in VERBS:
                cases[(" ".join(verb), tree)] = (
                    lambda tree=tree, state=state, verb=verb: verb_once(tree, state, verb))
            cases[("--version", tree)] = lambda tree=tree: version_once(tree)
        results: dict[tuple[str, Path], list[float]] = {key: [] for key in cases}
        for _ in range(args.runs):
            for key, run in cases.items():
                results[key].append(run())
    print(f"load average {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs; "
          f"CPU seconds (user+sys) per process: median of {args.runs} runs (fastest)")
    names = list(dict.fromkeys(name for name, _ in cases))
    header = "| process | " + " | ".join(str(tree) for tree in trees) + (
        " | ratio |" if len(trees) == 2 else " |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name in names:
        medians = [statistics.median(results[(name, tree)]) for tree in trees]
        cells = " | ".join(f"{m:.3f} ({min(results[(name, tree)]):.3f})"
                           for m, tree in zip(medians, trees, strict=True))
        ratio = f" | {medians[0] / medians[1]:.2f} |" if len(trees) == 2 else " |"
        print(f"| `{name}` | {cells}{ratio}")


if __name__ == "__main__":
    main()
