"""Time from process start to a valid Pebble-issued certificate on the HTTPS port: the appliance
(`appliance serve`, tls.mode = acme) side by side with Caddy (`acme_ca` + `acme_ca_root`) on the
same Pebble, in one run. Prints both medians and the ratio.

Needs the Debian packages pebble and caddy (installs caddy with apt-get when it is missing).
`ACME_BENCH_RUNS` (default 3) runs of each, each with fresh state (a first issuance).
Loopback only; stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import clean_env  # noqa: E402
from tests.support.acme import (  # noqa: E402
    NAME,
    Pebble,
    free_port,
    make_mini_ca,
    prepare_state,
    write_config,
)

TIMEOUT = 60.0


def ensure_caddy() -> str:
    found = shutil.which("caddy")
    if found:
        return found
    print("caddy not found: installing the Debian package", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "caddy"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    found = shutil.which("caddy")
    if not found:
        raise SystemExit("caddy is still missing after apt-get install caddy")
    return found


def wait_for_certificate(port: int, trust: ssl.SSLContext, issuer_marker: str,
                         proc: subprocess.Popen[bytes]) -> float:
    """Until a handshake on `port` for NAME verifies against Pebble's root; returns when the
    port first accepted a TCP connection."""
    deadline = time.monotonic() + TIMEOUT
    listening = 0.0
    while time.monotonic() < deadline:
        if not listening:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                listening = time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as raw, \
                    trust.wrap_socket(raw, server_hostname=NAME) as tls:
                cert = tls.getpeercert()
                issuer = dict(x[0] for x in cert.get("issuer", ()))
                if issuer_marker in str(issuer.get("commonName", "")):
                    return listening
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.01)
    raise TimeoutError("no valid certificate in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_appliance(work: Path, pebble: Pebble, trust: ssl.SSLContext) -> tuple[float, float]:
    work.mkdir(parents=True)
    state, _ = prepare_state(work)
    https_port = free_port()
    config = write_config(work / "appliance.toml", directory=pebble.directory,
                          http_port=pebble.http_port, ca_bundle=pebble.ca.ca_pem)
    config.write_text(config.read_text().replace('listen = "127.0.0.1:0"',
                                                 f'listen = "127.0.0.1:{https_port}"', 1))
    log = (work / "appliance.log").open("wb")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--config", str(config),
         "--state-dir", str(state)],
        stdout=log, stderr=subprocess.STDOUT, env=clean_env(APPLIANCE_LOG_LEVEL="warning"),
        cwd=work)
    try:
        listening = wait_for_certificate(https_port, trust, "Pebble", proc)
        done = time.monotonic()
        return done - start, listening - start
    finally:
        stop(proc)
        log.close()


def run_caddy(caddy: str, work: Path, pebble: Pebble, trust: ssl.SSLContext,
              https_port: int) -> tuple[float, float]:
    work.mkdir(parents=True)
    caddyfile = work / "Caddyfile"
    caddyfile.write_text(
        "{\n"
        "  admin off\n"
        f"  http_port {pebble.http_port}\n"
        f"  https_port {https_port}\n"
        f"  acme_ca {pebble.directory}\n"
        f"  acme_ca_root {pebble.ca.ca_pem}\n"
        "  email admin@example.org\n"
        f"  storage file_system {{\n    root {work / 'data'}\n  }}\n"
        "  skip_install_trust\n"
        "  ocsp_stapling off\n"
        "}\n"
        f"{NAME} {{\n  respond \"ok\"\n}}\n")
    log = (work / "caddy.log").open("wb")
    env = clean_env(HOME=str(work), XDG_DATA_HOME=str(work / "xdg-data"),
                    XDG_CONFIG_HOME=str(work / "xdg-config"))
    start = time.monotonic()
    proc = subprocess.Popen([caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        listening = wait_for_certificate(https_port, trust, "Pebble", proc)
        done = time.monotonic()
        return done - start, listening - start
    finally:
        stop(proc)
        log.close()


def main() -> int:
    if not shutil.which("pebble"):
        raise SystemExit("pebble is missing: apt-get install pebble")
    caddy = ensure_caddy()
    version = subprocess.run([caddy, "version"], capture_output=True, text=True).stdout.strip()
    runs = int(os.environ.get("ACME_BENCH_RUNS", "3"))
    with tempfile.TemporaryDirectory(prefix="acme-bench-") as tmp:
        work = Path(tmp)
        ca = make_mini_ca(work / "ca")
        caddy_https = free_port()
        # Pebble's TLS-ALPN-01 port is Caddy's HTTPS port, so Caddy may use either challenge.
        pebble = Pebble(work, ca, http_port=free_port())
        pebble.tls_port = caddy_https
        pebble.start()
        try:
            trust = ssl.create_default_context(cadata=pebble.root_pem())
            ours, theirs = [], []
            for i in range(runs):
                ours.append(run_appliance(work / f"appliance-{i}", pebble, trust))
                theirs.append(run_caddy(caddy, work / f"caddy-{i}", pebble, trust, caddy_https))
        finally:
            pebble.stop()
    a, c = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in theirs)
    a_listen = statistics.median(t for _, t in ours)
    c_listen = statistics.median(t for _, t in theirs)

    def runs_of(results: list[tuple[float, float]]) -> str:
        return ", ".join(f"{t:.3f}" for t, _ in results)

    print(f"start -> valid Pebble certificate on the HTTPS port, median of {runs} runs")
    print(f"  appliance: {a:.3f} s (HTTPS port open after {a_listen:.3f} s, then "
          f"{a - a_listen:.3f} s to the certificate; runs: {runs_of(ours)})")
    print(f"  caddy:     {c:.3f} s (HTTPS port open after {c_listen:.3f} s, then "
          f"{c - c_listen:.3f} s to the certificate; runs: {runs_of(theirs)}; {version})")
    print(f"  ratio caddy/appliance: {c / a:.2f}x "
          f"({'appliance faster' if a < c else 'caddy faster'}); "
          f"after the port opens: {(c - c_listen) / (a - a_listen):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
