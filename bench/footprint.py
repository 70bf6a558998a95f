"""What the appliance costs to run: binary size, cold start to the first HTTPS 200 (median of 5),
idle RSS, and RSS while 200 query runs are in flight -- for dist/appliance and for
`python -m appliance` in the venv (the baseline, measured in the same run).

    .venv/bin/python bench/footprint.py [--runs 5] [--concurrency 200] [--rows 300000]

Query runs use `serve --dev`'s demo SQLite datasource, with a stored query that counts through a
recursive CTE so each run stays in flight for a while. Prints a Markdown table and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "dist" / "appliance"
PASSWORD = "footprint-password-0123"
TARGETS = {"size_mb": 40, "start_s": 1.5, "idle_mb": 60, "busy_mb": 150}
SLOW_QUERY = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
              "WHERE x < {{ n }}) SELECT count(*) AS n FROM c")


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    out.pop("NOTIFY_SOCKET", None)
    out.pop("CREDENTIALS_DIRECTORY", None)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (the one-file binary runs Python in a child)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(match.group(1)) if match else 0
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            todo += [int(c) for c in children]
        except OSError:
            continue
    return total / 1024


def wait_https(port: int, deadline: float) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(request)
                if tls.recv(64).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            time.sleep(0.005)
    return False


class Target:
    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command
        self.work = Path(tempfile.mkdtemp(prefix="footprint-"))
        self.state = self.work / ".appliance"

    def cli(self, *args: str) -> str:
        done = subprocess.run([*self.command, *args], cwd=self.work, env=env(),
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{self.name} {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def prepare(self) -> str:
        password = self.work / "password"
        password.write_text(PASSWORD)
        self.cli("init", "--state-dir", str(self.state), "--admin-password-file", str(password))
        return self.cli("tokens", "create", "admin", "--state-dir", str(self.state)) \
            .strip().splitlines()[-1]

    def start(self, port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.command, "serve", "--dev", "--listen", f"127.0.0.1:{port}"],
                                cwd=self.work, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def busy_rss(port: int, token: str, concurrency: int, rows: int, pid: int
                   ) -> tuple[float, float, int]:
    """Peak RSS while `concurrency` runs are in flight: (peak MB, seconds, runs answered 200)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    base = f"https://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        async with http.get(f"{base}/api/v1/datasources") as resp:
            listed = await resp.json()
        items = listed["datasources"] if isinstance(listed, dict) else listed
        demo = next(d for d in items if d["name"] == "demo")
        body = {"name": "footprint slow count", "datasource_id": demo["id"], "body": SLOW_QUERY,
                "parameters": [{"name": "n", "type": "integer"}], "timeout_ms": 120000}
        async with http.post(f"{base}/api/v1/queries", json=body) as resp:
            created = await resp.json()
            if resp.status not in (200, 201):
                raise SystemExit(f"cannot create the query: {created}")
        url = f"{base}/api/v1/queries/{created['id']}/run"

        async def one() -> int:
            async with http.post(url, json={"params": {"n": rows}}) as resp:
                await resp.read()
                return resp.status

        peak = tree_rss_mb(pid)
        started = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(concurrency)]
        while not all(t.done() for t in tasks):
            peak = max(peak, tree_rss_mb(pid))
            await asyncio.sleep(0.02)
        statuses = [t.result() for t in tasks]
        return peak, time.monotonic() - started, sum(1 for s in statuses if s == 200)


def measure(target: Target, runs: int, concurrency: int, rows: int) -> dict[str, float | str]:
    token = target.prepare()
    port = free_port()
    # First start creates the local CA and the demo; the timed starts below are cold processes on
    # an existing state directory.
    proc = target.start(port)
    if not wait_https(port, time.monotonic() + 60):
        stop(proc)
        raise SystemExit(f"{target.name} did not answer")
    stop(proc)
    starts = []
    for _ in range(runs):
        began = time.monotonic()
        proc = target.start(port)
        ok = wait_https(port, began + 60)
        starts.append(time.monotonic() - began)
        if not ok:
            stop(proc)
            raise SystemExit(f"{target.name} did not answer")
        stop(proc)
    proc = target.start(port)
    try:
        wait_https(port, time.monotonic() + 60)
        for _ in range(20):
            wait_https(port, time.monotonic() + 5)
        time.sleep(1.0)
        idle = tree_rss_mb(proc.pid)
        peak, seconds, ok = asyncio.run(busy_rss(port, token, concurrency, rows, proc.pid))
    finally:
        stop(proc)
    return {"start_s": statistics.median(starts), "idle_mb": idle, "busy_mb": peak,
            "busy_s": seconds, "busy_ok": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rows", type=int, default=300_000,
                        help="how far each run counts (how long it stays in flight)")
    parser.add_argument("--skip-binary", action="store_true")
    args = parser.parse_args()

    targets = [Target("python -m appliance", [sys.executable, "-m", "appliance"])]
    if not args.skip_binary:
        if not BINARY.exists():
            print("dist/appliance is missing: run `make binary` (or pass --skip-binary)")
            return 1
        targets.insert(0, Target("dist/appliance", [str(BINARY)]))
    results: dict[str, dict[str, float | str]] = {}
    try:
        for target in targets:
            results[target.name] = measure(target, args.runs, args.concurrency, args.rows)
            if target.name == "dist/appliance":
                results[target.name]["size_mb"] = BINARY.stat().st_size / 1e6
    finally:
        for target in targets:
            target.cleanup()

    print(f"\n{args.concurrency} concurrent runs counting to {args.rows}; "
          f"start is the median of {args.runs}\n")
    print("| | binary size | start to first HTTPS 200 | idle RSS | RSS, 200 runs in flight |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        size = f"{r['size_mb']:.1f} MB" if "size_mb" in r else "-"
        print(f"| `{name}` | {size} | {r['start_s']:.2f} s | {r['idle_mb']:.0f} MB | "
              f"{r['busy_mb']:.0f} MB ({r['busy_ok']}/{args.concurrency} ok in "
              f"{r['busy_s']:.1f} s) |")
    print(f"| target | ≤ {TARGETS['size_mb']} MB | ≤ {TARGETS['start_s']} s | "
          f"≤ {TARGETS['idle_mb']} MB | ≤ {TARGETS['busy_mb']} MB |")
    if len(results) == 2:
        binary, python = results["dist/appliance"], results["python -m appliance"]
        ratio = float(binary["start_s"]) / float(python["start_s"])
        print(f"\nbinary / python: start {ratio:.2f}x,"
              f" idle RSS {float(binary['idle_mb']) / float(python['idle_mb']):.2f}x, busy RSS "
              f"{float(binary['busy_mb']) / float(python['busy_mb']):.2f}x")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
