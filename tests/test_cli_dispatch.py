"""The CLI's dispatch: a command line imports the module of the verb it names and no other, and
still knows every verb when asked for them (`--help`, no verb, an unknown one).

Owns the checks of `appliance.cli.VERB_MODULES` against the verb modules themselves. Never tests
what a verb does (each verb's own tests do).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import ALL_MODULES, VERB_MODULES, build_parser, verb_modules
from tests.conftest import ROOT, clean_env, run_cli

CLI = ROOT / "appliance" / "cli"


def _registers(path: Path) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "register"
               for node in ast.parse(path.read_text()).body)


def _verbs_of(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_every_module_with_a_register_is_a_verb_module() -> None:
    modules = {path.stem for path in CLI.glob("*.py") if _registers(path)}
    assert modules == set(ALL_MODULES)


@pytest.mark.parametrize("module", ALL_MODULES)
def test_each_module_registers_exactly_the_verbs_mapped_to_it(module: str) -> None:
    mapped = {verb for verb, name in VERB_MODULES.items() if name == module}
    for verb in mapped:
        assert _verbs_of(build_parser([verb, "--help"])) == mapped


@pytest.mark.parametrize("argv,expected", [
    (["users", "list", "--state-dir", "x"], ("users",)),
    (["restore", "backup.bin"], ("backup",)),
    (["import", "dir", "--dry-run"], ("export",)),
    (["--version"], ()),
    (["--help", "users"], ALL_MODULES),
    (["-h"], ALL_MODULES),
    ([], ALL_MODULES),
    (["nonsense"], ALL_MODULES),
    (["--bogus"], ALL_MODULES),
])
def test_a_command_line_needs_its_verbs_module_only(argv: list[str],
                                                     expected: tuple[str, ...]) -> None:
    assert verb_modules(argv) == expected


def test_the_top_level_help_and_a_wrong_verb_still_name_every_verb() -> None:
    shown = run_cli("--help")
    assert shown.returncode == 0
    wrong = run_cli("nonsense")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    for verb in VERB_MODULES:
        assert verb in shown.stdout and verb in wrong.stderr


def test_version_imports_neither_the_core_nor_aiohttp() -> None:
    """`appliance version` and `--version` answer without the services (what made every verb pay
    ~0.5 s of CPU before it started)."""
    probe = ("import sys\nfrom appliance.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print([m for m in ('appliance.core', 'aiohttp', 'appliance.cli.users')"
             " if m in sys.modules], file=sys.stderr)\n")
    for args in (["version"], ["--version"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, env=clean_env(), cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "appliance" in done.stdout
        assert done.stderr.strip().splitlines()[-1] == "[]", (args, done.stderr)
