"""The systemd unit: `systemd-analyze security --offline=true` scores 1.5 or lower and `verify` is
clean; the unit keeps what the appliance needs (notify, reload, credential, state, one capability)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

UNIT = ROOT / "systemd" / "appliance.service"
BOUND = 1.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_security_exposure_is_at_most_the_bound() -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    score = float(match.group(1))
    assert score <= BOUND, f"exposure {score} > {BOUND}:\n" + "\n".join(
        line for line in done.stdout.splitlines() if "✗" in line)


def test_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: point it at a stand-in of the installed binary.
    stand_in = tmp_path / "appliance"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "appliance.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/appliance", str(stand_in)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stdout + done.stderr


def test_the_unit_keeps_what_the_appliance_needs() -> None:
    found = directives(UNIT.read_text())
    assert found["Type"] == ["notify"]
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert found["ExecStart"][0].startswith("/usr/local/bin/appliance serve ")
    assert found["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert found["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert found["User"] == ["appliance"] and found["StateDirectory"] == ["appliance"]
    assert found["ConfigurationDirectory"] == ["appliance"]
    assert found["LoadCredential"] == ["encryption-key:/etc/appliance/encryption-key"]
    assert found["ProtectSystem"] == ["strict"] and found["NoNewPrivileges"] == ["yes"]
    families = found["RestrictAddressFamilies"][0].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]  # outbound sockets, sd_notify
    # The state directory is the only writable place, and it is where serve keeps its state.
    assert "--state-dir /var/lib/appliance" in found["ExecStart"][0]
    assert "--config /etc/appliance/appliance.toml" in found["ExecStart"][0]
