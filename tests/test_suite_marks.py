"""The marks that `make test-fast` selects on: every test file that drives real Chromium is marked
`browser`, every one that starts real Pebble is marked `pebble`.

Owns that check, read from each file's source (nothing imported or started). Never decides what
runs: the Makefile's `-m` does; this only keeps a new file from slipping past it unmarked.
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
