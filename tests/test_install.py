"""`appliance install` into a temporary --root: every file, its mode and content; --dry-run changes
nothing; a second run overwrites neither the settings file nor the key; running from Python
without --binary is refused clearly."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from appliance import settings

from .conftest import ROOT, run_cli
from .support.cli import run_verb


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fake_binary(tmp_path: Path) -> Path:
    binary = tmp_path / "appliance-binary"
    binary.write_bytes(b"#!/bin/sh\necho appliance\n")
    binary.chmod(0o700)
    return binary


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    done = run_verb("install", "--dry-run", "--root", str(root),
                   "--binary", str(fake_binary(tmp_path)))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("would ")]
    assert len(lines) == 8
    for expected in ("usr/local/bin/appliance", "etc/systemd/system/appliance.service",
                     "usr/local/share/doc/appliance/install.md",
                     "etc/appliance/appliance.toml", "var/lib/appliance", "run init",
                     "etc/appliance/encryption-key"):
        assert any(expected in line for line in lines), expected
    assert "nothing was changed" in done.stdout
    assert tree(root) == set()


def test_dry_run_from_python_without_binary(tmp_path: Path) -> None:
    """A venv install has no binary to copy: the dry run still shows every step, and says what
    a real run needs (issue 25, bug 10)."""
    root = tmp_path / "root"
    root.mkdir()
    done = run_verb("install", "--dry-run", "--root", str(root))
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert "usr/local/bin/appliance" in first and "--binary PATH" in first
    assert "nothing was changed" in done.stdout and tree(root) == set()


def test_install_into_a_root_writes_every_file_with_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    binary = fake_binary(tmp_path)
    password = tmp_path / "password"
    password.write_text("install-password-0123\n")
    done = run_cli("install", "--root", str(root), "--binary", str(binary),
                   "--admin-password-file", str(password))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "systemctl enable --now appliance" in done.stdout

    for folder in ("usr", "usr/local", "usr/local/bin", "etc", "etc/systemd/system", "var/lib"):
        assert mode(root / folder) == 0o755, folder
    installed = root / "usr/local/bin/appliance"
    assert installed.read_bytes() == binary.read_bytes() and mode(installed) == 0o755

    unit = root / "etc/systemd/system/appliance.service"
    assert unit.read_text() == (ROOT / "systemd/appliance.service").read_text()
    assert mode(unit) == 0o644
    # The unit's Documentation= names a file install wrote.
    documentation = next(line.partition("=")[2] for line in unit.read_text().splitlines()
                         if line.startswith("Documentation="))
    assert documentation.startswith("file:///")
    guide = root / documentation.removeprefix("file:///")
    assert guide.read_text() == (ROOT / "docs/install.md").read_text() and mode(guide) == 0o644

    config = root / "etc/appliance/appliance.toml"
    assert mode(config) == 0o640 and mode(config.parent) == 0o755
    text = config.read_text()
    assert tomllib.loads(text).keys() == settings.SCHEMA.keys()  # every section, values commented
    for section, key, _default, _doc in settings.documented_keys():
        assert f"# {key} = " in text, f"{section}.{key} missing from the template"
    # The file loads as settings (every value commented: the defaults).
    loaded = settings.load(config_file=config, env={})
    assert loaded.server.listen.port == 443

    state = root / "var/lib/appliance"
    assert mode(state) == 0o700
    assert (state / "appliance.db").is_file() and mode(state / "instance.key") == 0o600
    key = root / "etc/appliance/encryption-key"
    assert mode(key) == 0o600
    assert key.read_bytes() == (state / "instance.key").read_bytes()
    assert "one-time password" not in done.stdout  # the password file was used

    # The first admin exists: the installed state works with the CLI.
    listed = run_cli("users", "list", "--state-dir", str(state), "--config", str(config))
    assert listed.returncode == 0 and "admin" in listed.stdout, listed.stderr


def test_a_second_install_keeps_settings_and_key_and_replaces_the_binary(tmp_path: Path) -> None:
    root = tmp_path / "root"
    binary = fake_binary(tmp_path)
    assert run_verb("install", "--root", str(root), "--binary", str(binary)).returncode == 0
    config = root / "etc/appliance/appliance.toml"
    key = root / "etc/appliance/encryption-key"
    config.write_text('[log]\nlevel = "debug"\n')
    secret = key.read_bytes()
    binary.write_bytes(b"#!/bin/sh\necho appliance v2\n")

    again = run_verb("install", "--root", str(root), "--binary", str(binary))
    assert again.returncode == 0, again.stderr
    assert "left as it is" in again.stdout
    assert config.read_text() == '[log]\nlevel = "debug"\n'
    assert key.read_bytes() == secret
    assert (root / "usr/local/bin/appliance").read_bytes() == binary.read_bytes()
    assert "one-time password" not in again.stdout  # init: the admin exists already


def test_install_with_a_domain_sets_up_acme(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = run_verb("install", "--root", str(root), "--binary", str(fake_binary(tmp_path)),
                   "--domain", "data.example.com", "--email", "ops@example.com")
    assert done.returncode == 0, done.stderr
    loaded = settings.load(config_file=root / "etc/appliance/appliance.toml", env={})
    assert loaded.tls.mode == "acme" and loaded.tls.names == ("data.example.com",)
    assert loaded.server.http_listen is not None and loaded.server.http_listen.port == 80


def test_refusals(tmp_path: Path) -> None:
    root = tmp_path / "root"
    from_python = run_verb("install", "--root", str(root))
    assert from_python.returncode == 2
    assert "not running from the appliance binary" in from_python.stderr
    assert "--binary" in from_python.stderr
    missing = run_verb("install", "--root", str(root), "--binary", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    half = run_verb("install", "--root", str(root), "--binary", str(fake_binary(tmp_path)),
                   "--domain", "data.example.com")
    assert half.returncode != 0 and "--email" in half.stderr
    assert not (root / "usr").exists()
