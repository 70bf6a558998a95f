"""The house's one-way flow (docs/architecture.md): entry points over the HTTP layer over the core
over the services. A module may import its own layer and those below, never one above — checked on
every import statement of the package, those inside functions and `TYPE_CHECKING` blocks too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"

# Highest first. A module belongs to the first layer one of whose prefixes it starts with; every
# module no layer names is a service (layer 3: store, keyring, audit, auth, egress, kinds, ...).
LAYERS: list[tuple[str, ...]] = [
    ("appliance.__main__", "appliance.cli"),
    ("appliance.server", "appliance.http", "appliance.reload"),
    ("appliance.core", "appliance.bootstrap", "appliance.demo"),
]
SERVICES = len(LAYERS)


def _layer(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return SERVICES


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from appliance import cli` names a module too.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "appliance"]
    return [(line, name) for line, name in found if name.split(".")[0] == "appliance"]


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_has_modules_in_every_layer() -> None:
    levels = {_layer(_module_name(p)) for p in _sources()}
    assert levels == set(range(SERVICES + 1)), levels


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for path in _sources():
        module = _module_name(path)
        level = _layer(module)
        upward += [f"{module} (layer {level}) line {line}: {name}"
                   for line, name in _imports(path)
                   if name != "appliance" and _layer(name) < level]
    assert not upward, "\n".join(upward)


def test_the_check_finds_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from appliance.http.app_keys import CORE\n    return CORE\n")
    assert [name for _, name in _imports(bad)] == ["appliance.http.app_keys"]
    assert _layer("appliance.http.app_keys") < _layer("appliance.audit.log")
