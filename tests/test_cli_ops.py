"""The command line as an operator meets it (issue 25): every verb's user errors end in one line
and exit 2 (never a traceback), `--version`, help without a verb, `--dev` on every verb,
read-only verbs change nothing, `--json`, `keys change-password` on an installed system, `users
reset-password` and `trust`. Real state directories and SQLite files; one real subprocess per
new verb."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from appliance import state_dir
from appliance.cli import build_parser
from appliance.tls.local_ca import ensure_ca
from tests.conftest import clean_env, run_cli
from tests.support.cli import run_verb
from tests.support.keyring import install_unit, make_settings, open_all, raw_sql


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
            ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable verb: (words, its parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    out = []
    for name, child in subs[0].choices.items():
        out += _leaves(child, (*path, name))
    return out


VERBS = _leaves(build_parser())
# What a missing state directory gives when it is not exit 2: doctor reports it as a FAILed check.
EXIT_WITHOUT_STATE = {("doctor",): 1}


def _argv(words: tuple[str, ...], parser: argparse.ArgumentParser, *, path_arg: Path,
          state: Path | None) -> list[str]:
    """The verb with every required argument filled (a path argument: `path_arg`) and, when it
    takes one, `--state-dir state`."""
    argv = list(words)
    for action in parser._actions:
        if not action.required or action.dest == "help":
            continue
        value = (str(path_arg) if action.type is Path else
                 str(next(iter(action.choices))) if action.choices else
                 "postgresql://u@127.0.0.1:1/db" if action.dest == "to" else "someone")
        argv += ([value] if not action.option_strings else [action.option_strings[0], value])
    options = {o for a in parser._actions for o in a.option_strings}
    if state is not None and "--state-dir" in options:
        argv += ["--state-dir", str(state)]
    if "--yes" in options:
        argv.append("--yes")
    if "--root" in options:
        argv += ["--root", str(path_arg.parent)]
    return argv


def _one_error(result: object, argv: list[str]) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]  # an in-process result carries stderr too
    assert "Traceback" not in stderr, (argv, stderr)
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, (argv, stderr)


def test_the_walk_finds_every_verb() -> None:
    names = {" ".join(words) for words, _ in VERBS}
    assert {"backup", "keys change-password", "users reset-password", "trust",
            "tokens list", "audit verify", "install"} <= names
    assert len(names) >= 23


@pytest.mark.parametrize("words", [w for w, _ in VERBS if w != ("serve",)], ids=" ".join)
def test_a_bad_flag_is_a_usage_error(words: tuple[str, ...]) -> None:
    result = run_verb(*words, "--no-such-flag")
    assert result.returncode == 2
    _one_error(result, list(words))
    assert result.stderr.startswith("usage: appliance")


@pytest.mark.parametrize("words,parser", VERBS, ids=[" ".join(w) for w, _ in VERBS])
def test_a_missing_state_dir_and_files(words: tuple[str, ...], parser: argparse.ArgumentParser,
                                       tmp_path: Path) -> None:
    if words == ("serve",):
        pytest.skip("serve runs as a subprocess below")
    argv = _argv(words, parser, path_arg=tmp_path / "missing" / "file",
                 state=tmp_path / "no-state")
    result = run_verb(*argv)
    if words in (("version",), ("init",)):  # nothing to find: they ran (init created the state)
        assert result.returncode in (0, 2) and "Traceback" not in result.stderr
        return
    assert result.returncode == EXIT_WITHOUT_STATE.get(words, 2), (argv, result)
    if result.returncode == 2:
        _one_error(result, argv)
    assert not (tmp_path / "no-state").exists() or words == ("install",)


@pytest.mark.parametrize("words,parser", VERBS, ids=[" ".join(w) for w, _ in VERBS])
def test_missing_and_unwritable_paths_with_a_real_state(
        words: tuple[str, ...], parser: argparse.ArgumentParser, tmp_path: Path,
        ready_state: Path) -> None:
    if words in (("serve",), ("version",)):
        pytest.skip("serve: below; version takes no path")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for path_arg in (tmp_path / "missing" / "file", blocker / "under-a-file"):
        argv = _argv(words, parser, path_arg=path_arg, state=ready_state)
        before = (ready_state / state_dir.STORE_FILE).read_bytes()
        result = run_verb(*argv)
        assert "Traceback" not in result.stderr, (argv, result.stderr)
        if result.returncode != 0:
            assert result.returncode in (1, 2), (argv, result)
            if result.returncode == 2:
                _one_error(result, argv)
        if words != ("init",) and result.returncode == 2:
            assert (ready_state / state_dir.STORE_FILE).read_bytes() == before, argv


def test_serve_errors_in_a_real_process(tmp_path: Path) -> None:
    result = run_cli("serve", "--no-such-flag")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli("serve", "--state-dir", str(blocker / "state"), "--listen",
                     "127.0.0.1:0", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_backup_into_a_missing_directory(ready_state: Path, tmp_path: Path) -> None:
    result = run_verb("backup", "--state-dir", str(ready_state), "--out",
                      str(tmp_path / "nope" / "b.tar"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: --out {tmp_path / 'nope' / 'b.tar'}: the directory {tmp_path / 'nope'} does "
        "not exist (create it first, preferably apart from the state directory and the "
        "instance secret)")
    assert not (tmp_path / "nope").exists()


# --- top level --------------------------------------------------------------------------------


def test_version_and_help_without_a_verb() -> None:
    from appliance import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"appliance {__version__}"
    result = run_cli()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: appliance") and "exit codes" in result.stderr
    result = run_verb("--help")
    assert result.returncode == 0
    for line in ("0    done", "1    the verb ran and found a problem", "2    it could not run"):
        assert line in result.stdout


# --- --dev, read-only verbs, --json -----------------------------------------------------------


@pytest.fixture
def ready_state(tmp_path: Path) -> Path:
    """An initialised state directory whose keyring exists (as after a first `serve`)."""
    state = tmp_path / "state"
    assert run_verb("init", "--state-dir", str(state)).returncode == 0

    async def keyring() -> None:
        store, _ = await open_all(make_settings(state))
        await store.close()

    asyncio.run(keyring())
    return state


def _fingerprint(state: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(state.iterdir()) if p.is_file()}


READ_VERBS = (("users", "list"), ("tokens", "list"), ("keys", "status"), ("audit", "list"),
              ("audit", "verify"), ("doctor",))


def test_read_verbs_change_nothing_right_after_init(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run_verb("init", "--state-dir", str(state)).returncode == 0
    before = _fingerprint(state)
    for words in READ_VERBS:
        result = run_verb(*words, "--state-dir", str(state))
        assert result.returncode in (0, 1), (words, result)  # doctor: no TLS material yet
        if words != ("audit", "list"):  # its output is JSON lines (no entry yet here)
            assert not any(line.startswith("{") for line in result.stdout.splitlines()), words
        assert result.stderr == "", (words, result.stderr)  # no log line either
        assert _fingerprint(state) == before, words
    # `init` creates the keyring (the audit chain's key lives in it); the read verbs above
    # left it as it was (the fingerprint covers the store's bytes) and made no other slot.
    assert raw_sql(state, "SELECT COUNT(*) FROM keyring_unseal") == [(1,)]
    result = run_verb("keys", "status", "--state-dir", str(state))
    assert "entries" not in result.stdout and "sealed field" in result.stdout, result.stdout


def test_every_verb_finds_the_dev_state(tmp_path: Path) -> None:
    """`make run` is `serve --dev` in the checkout: state in ./.appliance."""
    assert run_verb("init", "--dev", cwd=tmp_path).returncode == 0
    assert (tmp_path / ".appliance" / state_dir.STORE_FILE).exists()
    for words in READ_VERBS:
        result = run_verb(*words, "--dev", cwd=tmp_path)
        assert result.returncode in (0, 1), (words, result.stderr)
        assert "does not exist" not in result.stdout + result.stderr, words
    result = run_verb("users", "list", "--dev", "--json", cwd=tmp_path)
    assert [u["name"] for u in json.loads(result.stdout)] == ["admin"]


def test_json_output_of_read_verbs(ready_state: Path) -> None:
    s = ("--state-dir", str(ready_state))
    assert run_verb("tokens", "create", "admin", "--allow-without-2fa", *s).returncode == 0
    users = json.loads(run_verb("users", "list", "--json", *s).stdout)
    assert users[0]["name"] == "admin" and users[0]["totp_enabled"] is False
    assert users[0]["created_at"].endswith("Z")
    tokens = json.loads(run_verb("tokens", "list", "--json", *s).stdout)
    assert tokens[0]["owner"] == "admin" and tokens[0]["state"] == "active"
    keys = json.loads(run_verb("keys", "status", "--json", *s).stdout)
    assert keys["keyring"]["active_version"] == 1 and keys["keys"][0]["state"] == "active"
    doctor = run_verb("doctor", "--json", *s)
    report = json.loads(doctor.stdout)
    assert doctor.returncode == (0 if report["ok"] else 1)
    assert {c["name"] for c in report["checks"]} >= {"settings", "store", "state directory"}
    text = run_verb("users", "list", *s).stdout
    assert text.splitlines() == ["name\trole\tstate\t2fa", "admin\tadmin\tenabled\toff"]


def test_doctor_prints_each_fix_once(tmp_path: Path) -> None:
    result = run_verb("doctor", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    for line in result.stdout.splitlines():
        if " -> " in line:
            detail, _, fix = line.partition(" -> ")
            assert fix not in detail, line


# --- keys change-password on an installed system (bug 3) --------------------------------------


def test_change_password_updates_the_unit_credential(ready_state: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    credential = root / "etc/appliance/encryption-key"
    credential.parent.mkdir(parents=True)
    shutil.copyfile(ready_state / state_dir.INSTANCE_SECRET_FILE, credential)
    install_unit(root, credential)
    s = ("--state-dir", str(ready_state), "--root", str(root))
    # No terminal and no --yes: refused, nothing changed.
    before = credential.read_bytes()
    result = run_verb("keys", "change-password", *s)
    assert result.returncode == 2 and "--yes" in result.stderr
    assert credential.read_bytes() == before
    assert run_verb("doctor", *s).stdout.count("FAIL  unit credential") == 0
    # Confirmed: the state file and the unit's credential both hold the new secret.
    result = run_verb("keys", "change-password", "--yes", *s)
    assert result.returncode == 0, result.stderr
    assert credential.read_bytes() != before
    assert credential.read_bytes() == (ready_state / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    assert str(credential) in result.stdout and "systemctl restart appliance" in result.stdout
    assert oct(credential.stat().st_mode & 0o777) == "0o600"
    # The service would start: its credential opens the keyring (as systemd hands it over).
    creds = tmp_path / "creds"
    creds.mkdir()
    shutil.copyfile(credential, creds / "encryption-key")
    result = run_verb("keys", "status", "--state-dir", str(ready_state),
                      env=clean_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert result.returncode == 0 and "systemd credential" in result.stdout, result.stderr
    doctor = run_verb("doctor", *s)
    assert "ok    unit credential" in doctor.stdout


def test_doctor_finds_a_credential_the_keyring_does_not_open(ready_state: Path,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "root"
    credential = root / "etc/appliance/encryption-key"
    credential.parent.mkdir(parents=True)
    credential.write_bytes(os.urandom(32))  # what an older change-password left behind
    install_unit(root, credential)
    result = run_verb("doctor", "--state-dir", str(ready_state), "--root", str(root))
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if "unit credential" in x)
    assert line.startswith("FAIL") and "does not open this store's keyring" in line
    assert f"install -m 600 {ready_state / 'instance.key'} {credential}" in line
    # And change-password refuses to widen the gap.
    result = run_verb("keys", "change-password", "--yes", "--state-dir", str(ready_state),
                      "--root", str(root))
    assert result.returncode == 2 and "Nothing was changed" in result.stderr


def test_change_password_with_an_encrypted_credential_says_what_to_run(
        ready_state: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    credential = root / "etc/credstore.encrypted/encryption-key"
    credential.parent.mkdir(parents=True)
    credential.write_bytes(b"opaque")
    install_unit(root, credential, encrypted=True)
    result = run_verb("keys", "change-password", "--yes", "--state-dir", str(ready_state),
                      "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert credential.read_bytes() == b"opaque"
    assert (f"systemd-creds encrypt --name=encryption-key "
            f"{ready_state / 'instance.key'} {credential}") in result.stdout


# --- users reset-password ---------------------------------------------------------------------


def test_reset_password_ends_sessions_revokes_tokens_and_is_audited(ready_state: Path) -> None:
    s = ("--state-dir", str(ready_state))
    assert run_verb("tokens", "create", "admin", "--allow-without-2fa", *s).returncode == 0
    result = run_cli("users", "reset-password", "admin", *s)
    assert result.returncode == 0, result.stderr
    assert "1 API token revoked" in result.stdout
    password = result.stdout.strip().rpartition(": ")[2]
    assert len(password) >= 12 and password not in result.stderr
    entries = [json.loads(line) for line in
               run_verb("audit", "list", "--limit", "1", *s).stdout.splitlines()]
    assert entries[0]["action"] == "user.password.reset"
    assert entries[0]["actor"].startswith("cli:")
    assert password not in json.dumps(entries)
    tokens = json.loads(run_verb("tokens", "list", "--json", *s).stdout)
    assert [t["state"] for t in tokens] == ["inactive"]
    result = run_verb("users", "reset-password", "nobody", *s)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_reset_password_from_a_file(ready_state: Path, tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tiny\n")
    result = run_verb("users", "reset-password", "admin", "--password-file", str(short),
                      "--state-dir", str(ready_state))
    assert result.returncode == 2 and "at least 12" in result.stderr
    good = tmp_path / "good"
    good.write_text("a long enough password\n")
    result = run_verb("users", "reset-password", "admin", "--password-file", str(good),
                      "--state-dir", str(ready_state))
    assert result.returncode == 0 and "one-time" not in result.stdout


# --- trust ------------------------------------------------------------------------------------


def _trust_root(tmp_path: Path) -> Path:
    """A system root with what update-ca-certificates reads (its config, no system CAs)."""
    root = tmp_path / "root"
    for folder in ("etc/ssl/certs", "usr/share/ca-certificates", "etc/ca-certificates/update.d",
                   "usr/local/share/ca-certificates"):
        (root / folder).mkdir(parents=True)
        os.chmod(root / folder, 0o755)
    # One system CA, so that the bundle is written with or without ours.
    other = state_dir.ensure(tmp_path / "other-ca")
    ensure_ca(other)
    shutil.copyfile(other / "tls" / "ca.pem", root / "usr/share/ca-certificates/other.crt")
    (root / "etc/ca-certificates.conf").write_text("other.crt\n")
    return root


@pytest.mark.skipif(shutil.which("update-ca-certificates") is None
                    and not Path("/usr/sbin/update-ca-certificates").exists(),
                    reason="needs update-ca-certificates (Debian's ca-certificates)")
def test_trust_installs_and_uninstalls_the_local_ca(tmp_path: Path) -> None:
    state = state_dir.ensure(tmp_path / "state")
    ensure_ca(state)
    pem = (state / "tls" / "ca.pem").read_bytes()
    root = _trust_root(tmp_path)
    result = run_cli("trust", "--state-dir", str(state), "--root", str(root))
    assert result.returncode == 0, result.stderr
    installed = list((root / "usr/local/share/ca-certificates").glob("appliance-local-ca-*.crt"))
    assert len(installed) == 1 and installed[0].read_bytes() == pem
    assert oct(installed[0].stat().st_mode & 0o777) == "0o644"
    bundle = (root / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert pem.decode().strip() in bundle
    assert "certutil -A" in result.stdout and "policies.json" in result.stdout
    assert "ca.key" not in result.stdout
    result = run_verb("trust", "--uninstall", "--state-dir", str(state), "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not installed[0].exists()
    assert pem.decode().strip() not in (root / "etc/ssl/certs/ca-certificates.crt").read_text()


def test_trust_refuses_other_tls_modes_and_a_missing_ca(tmp_path: Path) -> None:
    state = state_dir.ensure(tmp_path / "state")
    root = _trust_root(tmp_path)
    env = clean_env(APPLIANCE_TLS_MODE="acme", APPLIANCE_TLS_NAMES="example.org",
                    APPLIANCE_TLS_EMAIL="ops@example.org")
    result = run_verb("trust", "--state-dir", str(state), "--root", str(root), env=env)
    assert result.returncode == 2 and "tls.mode is 'acme'" in result.stderr
    result = run_verb("trust", "--state-dir", str(state), "--root", str(root))
    assert result.returncode == 2 and "start `appliance serve` once" in result.stderr
    assert list((root / "usr/local/share/ca-certificates").iterdir()) == []
