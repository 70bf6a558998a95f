"""`appliance install`: put the running binary, the systemd unit, a commented settings file and an
initialised state directory in place (under `--root DIR` for a test or an image build).

Owns the install layout and its steps; `--dry-run` prints each step and changes nothing. Never
overwrites a settings file or a key that exists, and never prints a secret (except `init`'s
one-time admin password, once).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance import state_dir
from appliance.cli import init
from appliance.errors import ApplianceError, BadRequest
from appliance.keyring.sources import CREDENTIAL_NAME
from appliance.settings import documented_keys

USER = "appliance"
BIN_PATH = Path("usr/local/bin/appliance")
UNIT_PATH = Path("etc/systemd/system/appliance.service")
CONFIG_DIR = Path("etc/appliance")
CONFIG_PATH = CONFIG_DIR / "appliance.toml"
KEY_PATH = CONFIG_DIR / CREDENTIAL_NAME
STATE_PATH = Path("var/lib/appliance")
UNIT_NAME = "appliance.service"
DOC_PATH = Path("usr/local/share/doc/appliance/install.md")  # the unit's Documentation=


class InstallError(ApplianceError):
    code = "install_error"
    exit_code = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "install",
        help="install the binary, the systemd unit, settings and state (root)",
        description="Copy this binary to /usr/local/bin/appliance, write the systemd unit "
                    "(/etc/systemd/system/appliance.service), a commented "
                    "/etc/appliance/appliance.toml (never overwritten), create the system user "
                    "'appliance' and the state directory /var/lib/appliance, run init, and put "
                    "the instance secret where the unit's LoadCredential= reads it "
                    "(/etc/appliance/encryption-key), and the install guide the unit's "
                    "Documentation= names (/usr/local/share/doc/appliance/install.md). "
                    "Then: systemctl daemon-reload && "
                    "systemctl enable --now appliance.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print each step, change nothing")
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="install under DIR instead of / (tests, image builds); no user is "
                             "created and no ownership changed")
    parser.add_argument("--binary", type=Path, metavar="PATH",
                        help="the binary to install (default: the one running; required when "
                             "running from Python rather than the built binary)")
    parser.add_argument("--admin-user", metavar="NAME", default="admin",
                        help="the first admin's user name (default: admin)")
    parser.add_argument("--admin-password-file", type=Path, metavar="FILE",
                        help="the first admin's password; without it init prints a one-time one")
    parser.add_argument("--domain", metavar="NAME",
                        help="a public name: set up ACME (Let's Encrypt) certificates for it")
    parser.add_argument("--email", metavar="ADDR", help="ACME account contact (with --domain)")
    parser.set_defaults(run=run)


@dataclass
class Step:
    """One thing install does: a line to print and the action (None when only reported)."""

    text: str
    action: Callable[[], str | None] | None = None


NOT_THE_BINARY = ("not running from the appliance binary (this is {python} running Python); "
                  "build it with `make binary` and run dist/appliance install, or pass "
                  "--binary PATH")


def source_binary(explicit: Path | None, *, dry_run: bool = False) -> Path | None:
    """The binary to copy; None only in a dry run from Python (the step says what is missing)."""
    if explicit is not None:
        if not explicit.is_file():
            raise InstallError(f"--binary {explicit}: no such file")
        return explicit
    if getattr(sys, "frozen", False):
        return Path(sys.executable)
    if dry_run:
        return None
    raise InstallError(NOT_THE_BINARY.format(python=sys.executable))


def unit_source() -> Path:
    """The unit file: packaged beside the modules in the binary, or in a source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "systemd" / UNIT_NAME,
                      here.parents[2] / "systemd" / UNIT_NAME):
        if candidate.is_file():
            return candidate
    raise InstallError(f"the unit file {UNIT_NAME} is not packaged with this build")


def doc_source() -> Path:
    """The install guide (docs/install.md): packaged in the binary, or in a source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "docs" / "install.md",
                      here.parents[2] / "docs" / "install.md"):
        if candidate.is_file():
            return candidate
    raise InstallError("the install guide docs/install.md is not packaged with this build")


def settings_template() -> str:
    """A commented settings file naming every setting with its default."""
    lines = [
        "# Appliance settings. Every setting is listed with its default, commented out.",
        "# Environment variables APPLIANCE_<SECTION>_<KEY> override this file; see",
        "# docs/configuration.md. After a change: systemctl reload appliance (TLS files, egress,",
        "# log level apply live; the log names settings that need systemctl restart appliance).",
        "# Keep secrets out of this file (it is readable by the appliance group).",
    ]
    section = None
    for name, key, default, doc in documented_keys():
        if name != section:
            lines += ["", f"[{name}]"]
            section = name
        lines.append(f"# {doc}")
        lines.append(f"# {key} = {_toml(default)}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def plan(args: argparse.Namespace) -> list[Step]:
    root: Path = args.root
    real = root.resolve() == Path("/")
    binary = source_binary(args.binary, dry_run=args.dry_run)
    unit = unit_source()
    guide = doc_source()
    at = {name: root / rel for name, rel in (("bin", BIN_PATH), ("unit", UNIT_PATH),
                                              ("config", CONFIG_PATH), ("key", KEY_PATH),
                                              ("state", STATE_PATH), ("etc", CONFIG_DIR),
                                              ("doc", DOC_PATH))}
    if binary is None:  # a dry run from Python: say what a real run needs
        steps = [Step(f"copy the appliance binary to {at['bin']} (mode 0755): a real run needs "
                      "it: " + NOT_THE_BINARY.format(python=sys.executable))]
    else:
        steps = [Step(f"copy {binary} to {at['bin']} (mode 0755)",
                      lambda: _copy(binary, at["bin"], 0o755))]
    if real:
        steps.append(Step(f"create the system user {USER!r} (no login, no home)", _create_user))
    else:
        steps.append(Step(f"skip the system user {USER!r} (--root: create it in the target)"))
    steps.append(Step(f"write the systemd unit {at['unit']} (mode 0644)",
                      lambda: _copy(unit, at["unit"], 0o644)))
    steps.append(Step(f"write the install guide {at['doc']} (mode 0644; the unit's "
                      "Documentation=)", lambda: _copy(guide, at["doc"], 0o644)))
    steps.append(Step(f"write a commented settings file {at['config']} (mode 0640; an existing "
                      "one is left as it is)",
                      lambda: _write_config(at["config"], at["etc"], real)))
    steps.append(Step(f"create the state directory {at['state']} (mode 0700) and run init",
                      lambda: _init(args, at["config"], at["state"])))
    steps.append(Step(f"copy the instance secret to {at['key']} (mode 0600, root) for the "
                      "unit's LoadCredential= (an existing one is left as it is)",
                      lambda: _copy_key(at["state"], at["key"])))
    if real:
        steps.append(Step(f"give {at['state']} to {USER}:{USER}",
                          lambda: _chown_tree(at["state"])))
    else:
        steps.append(Step("skip ownership changes (--root)"))
    return steps


def run(args: argparse.Namespace) -> int:
    real = args.root.resolve() == Path("/")
    if real and not args.dry_run and os.geteuid() != 0:
        raise InstallError("install writes to /usr/local, /etc and /var/lib: run it as root "
                           "(sudo), or use --dry-run / --root DIR")
    if bool(args.domain) != bool(args.email):
        raise BadRequest("--domain and --email go together")
    steps = plan(args)
    for number, step in enumerate(steps, 1):
        prefix = "would" if args.dry_run else "step"
        print(f"{prefix} {number}/{len(steps)}: {step.text}", flush=True)
        if args.dry_run or step.action is None:
            continue
        note = step.action()
        if note:
            print(f"    {note}", flush=True)
    if args.dry_run:
        print("dry run: nothing was changed")
        return 0
    print("installed. Next:\n"
          "  systemctl daemon-reload\n"
          "  systemctl enable --now appliance\n"
          "  journalctl -u appliance -f")
    return 0


# -- the actions ---------------------------------------------------------------------------------


def mkdirs(path: Path) -> None:
    """Create missing directories as 0755 (the process umask is 077): bin, unit and /etc dirs."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir()
        os.chmod(folder, 0o755)  # noqa: S103 - system directories other users must traverse


def _copy(source: Path, target: Path, mode: int) -> str | None:
    mkdirs(target.parent)
    if source.resolve() == target.resolve():
        os.chmod(target, mode)
        return "already in place"
    tmp = target.with_name(f".{target.name}.new")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, target)  # a running binary keeps its old inode: upgrades are safe
    return None


def _create_user() -> str | None:
    try:
        pwd.getpwnam(USER)
        return f"user {USER!r} exists"
    except KeyError:
        pass
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()),
                   "/bin/false")
    done = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                           "--home-dir", "/nonexistent", "--shell", nologin, USER],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InstallError(f"useradd failed: {done.stderr.strip() or done.returncode}")
    return None


def _write_config(path: Path, directory: Path, real: bool) -> str | None:
    mkdirs(directory)
    os.chmod(directory, 0o755)  # noqa: S103 - /etc/appliance: the unit reads it as its user
    if path.exists():
        return f"{path} exists: left as it is"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(settings_template())
    os.chmod(path, 0o640)
    if real:
        os.chown(path, 0, pwd.getpwnam(USER).pw_gid)
    return None


def _init(args: argparse.Namespace, config: Path, state: Path) -> str | None:
    mkdirs(state.parent)
    init_args = argparse.Namespace(
        config=config, state_dir=str(state), admin_user=args.admin_user,
        admin_password_file=args.admin_password_file, domain=args.domain, email=args.email)
    code = init.run(init_args)
    if code != 0:
        raise InstallError(f"init failed (exit code {code})")
    return None


def _copy_key(state: Path, key: Path) -> str | None:
    if key.exists():
        return f"{key} exists: left as it is (it must be the secret this store was created with)"
    data = (state / state_dir.INSTANCE_SECRET_FILE).read_bytes()
    mkdirs(key.parent)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return None


def _chown_tree(path: Path) -> str | None:
    user = pwd.getpwnam(USER)
    for folder, dirs, files in os.walk(path):
        os.chown(folder, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(folder, name), user.pw_uid, user.pw_gid, follow_symlinks=False)
    return None
