"""The suite's own rules, read from each file's source (nothing imported or started): the marks
that `make test-fast` selects on (every test file that drives real Chromium is marked `browser`,
every one that starts real Pebble is marked `pebble`), and no module of the suite imports from a
test module (what several tests share lives in tests/support/).

Owns those checks. Never decides what runs: the Makefile's `-m` does; this only keeps a new file
from slipping past it unmarked, or from reaching into another test file for a helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# A name a file uses to start the binary → the mark that file must carry at module level.
MARK_FOR = {
    "launch_chromium": "browser",  # tests/support/console.py
    "chromium_for": "browser",     # tests/support/console.py (launches it)
    "sync_playwright": "browser",
    "Pebble": "pebble",            # tests/support/acme.py
}


def used_names(tree: ast.Module) -> set[str]:
    """Every name the file imports or mentions (a bare name or an attribute)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update(alias.name.rsplit(".", 1)[-1] for alias in node.names)
    return names


def module_marks(tree: ast.Module) -> set[str]:
    """The `pytest.mark.NAME`s of the module-level `pytestmark` (one mark or a list of them)."""
    marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            for sub in ast.walk(node.value):
                if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute)
                        and sub.value.attr == "mark"):
                    marks.add(sub.attr)
    return marks


def needed_marks(source: str) -> tuple[set[str], set[str]]:
    tree = ast.parse(source)
    need = {mark for name, mark in MARK_FOR.items() if name in used_names(tree)}
    return need, module_marks(tree)


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_every_file_that_starts_chromium_or_pebble_is_marked(path: Path) -> None:
    need, have = needed_marks(path.read_text())
    assert need <= have, (f"{path.name} starts {', '.join(sorted(need - have))} but its "
                          f"`pytestmark` lacks pytest.mark.{', pytest.mark.'.join(sorted(need - have))}")


def test_the_check_finds_an_unmarked_file_and_accepts_a_marked_one() -> None:
    unmarked = "from tests.support.console import launch_chromium\n"
    assert needed_marks(unmarked) == ({"browser"}, set())
    marked = ("import pytest\nfrom tests.support import acme\n"
              "pytestmark = [pytest.mark.pebble, pytest.mark.skipif(True, reason='x')]\n"
              "def test_x():\n    acme.Pebble\n")
    assert needed_marks(marked) == ({"pebble"}, {"pebble", "skipif"})


def test_the_marks_files_carry_are_the_ones_the_suite_declares(
        pytestconfig: pytest.Config) -> None:
    declared = {line.split(":", 1)[0].split("(", 1)[0]
                for line in pytestconfig.getini("markers")}
    assert set(MARK_FOR.values()) <= declared


# --- no test module imports from another ---------------------------------------------------------


def is_test_module(parts: list[str]) -> bool:
    """Whether a dotted module path (split), taken from tests/ or its package, names a test
    module: any part `test_*` (tests.test_x, .test_x, ..test_x, test_x)."""
    return any(part.startswith("test_") for part in parts)


def in_the_suite(parts: list[str]) -> bool:
    """Whether an absolute module path is the suite's: `tests...`, or a bare `test_*` (pytest's
    rootdir-relative import of a test file); any other is another package's (pytest, appliance)."""
    return parts[0] == "tests" or parts[0].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules `source` imports from, as written (`from .test_x import y` → `.test_x`;
    `from tests import test_x` → `tests.test_x`), wherever the import stands (a function's too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names
                      if in_the_suite(alias.name.split("."))
                      and is_test_module(alias.name.split("."))]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            parts = (node.module or "").split(".")
            if node.level == 0 and not in_the_suite(parts):
                continue
            if is_test_module(parts):
                found.append(base)
            else:  # `from tests import test_x`, `from . import test_x`
                sep = "" if base.endswith(".") else "."
                found += [f"{base}{sep}{alias.name}" for alias in node.names
                          if is_test_module([alias.name])]
    return found


SUITE_MODULES = sorted([*TESTS.glob("*.py"), *(TESTS / "support").glob("*.py")])


@pytest.mark.parametrize("path", SUITE_MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_module_of_the_suite_imports_from_a_test_module(path: Path) -> None:
    imported = imported_test_modules(path.read_text())
    assert not imported, (f"tests/{path.relative_to(TESTS)} imports from the test module(s) "
                          f"{', '.join(imported)}: a test module is a list of tests; move what "
                          "they share into tests/support/, in a module named after what it holds")


def test_the_import_check_finds_each_form_and_passes_support_and_packages() -> None:
    offending = ("from .test_tls_files import TestCA\n"
                 "from tests.test_auth_totp import enrol\n"
                 "from ..test_cli_ops import x\n"
                 "import tests.test_reload\n"
                 "import test_reload as r\n"
                 "from tests import test_demo, conftest\n"
                 "from . import test_docs\n"
                 "def helper():\n    from .test_egress_api_serve import probe\n")
    assert imported_test_modules(offending) == [
        ".test_tls_files", "tests.test_auth_totp", "..test_cli_ops", "tests.test_reload",
        "test_reload", "tests.test_demo", ".test_docs", ".test_egress_api_serve"]
    fine = ("import pytest\nfrom .conftest import clean_env\nfrom .support.certificates import x\n"
            "from tests.support import acme\nfrom appliance.store import test_helpers\n"
            "import appliance.test_helpers\nfrom _pytest import tmpdir\nimport appliance.cli\n")
    assert imported_test_modules(fine) == []
