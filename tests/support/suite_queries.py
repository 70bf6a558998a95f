"""Every query the test suite and the demo save, collected from the source (by AST: the literal
bodies given to `create_query(...)` and the literal `{"body": …}` objects), so the secret scanner
can be measured against them for false positives.

Owns the collection only. Never runs a test, never imports a test module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SavedQuery:
    where: str  # file:line
    body: Any  # SQL text or a JSON value
    parameters: Any


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


class _NotLiteral:
    pass


_NOT_LITERAL = _NotLiteral()


# The calls that take a query's body (and its declarations), by their argument positions: the
# API helper, the compile entry point, and the binding tests' own shorthands.
_CALLS = {"create_query": (2, 3), "compile_query": (1, 2), "compile_sql": (0, 1),
          "compile_mysql": (0, 1), "sql": (0, 1), "refused": (0, 1), "rest": (0, 1),
          "mongo": (0, 1), "mysql": (0, 1)}


def _from_call(call: ast.Call) -> tuple[ast.AST | None, ast.AST | None] | None:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else \
        call.func.id if isinstance(call.func, ast.Name) else ""
    if name not in _CALLS:
        return None
    at_body, at_params = _CALLS[name]
    keywords = {k.arg: k.value for k in call.keywords}
    body = call.args[at_body] if len(call.args) > at_body else keywords.get("body")
    params = call.args[at_params] if len(call.args) > at_params else keywords.get("parameters")
    return body, params


def _parametrized(call: ast.Call) -> list[ast.AST]:
    """The SQL texts of `@pytest.mark.parametrize("text…", [...])` (the binding tests)."""
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "parametrize"
            and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant)
            and str(call.args[0].value).startswith(("text", "body"))
            and isinstance(call.args[1], ast.List)):
        return []
    return [e.elts[0] if isinstance(e, ast.Tuple) else e for e in call.args[1].elts]


def _from_dict(node: ast.Dict) -> tuple[ast.AST | None, ast.AST | None] | None:
    keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    if "body" not in keys or "name" not in keys:
        return None  # a query's payload has a name and a body (a run's has params)
    return keys["body"], keys.get("parameters")


def collect(paths: list[Path] | None = None) -> tuple[list[SavedQuery], int]:
    """The literal queries, and how many query bodies were not literals (skipped)."""
    found: list[SavedQuery] = []
    skipped = 0
    # The secret-scanning tests paste fake keys on purpose: they are not the suite's queries.
    for path in paths or sorted(p for p in TESTS.rglob("test_*.py")
                                if not p.name.startswith("test_secret_scan")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for element in _parametrized(node):
                    value = _literal(element)
                    if isinstance(value, str | dict):
                        found.append(SavedQuery(f"{path.name}:{element.lineno}", value, []))
            pair = _from_call(node) if isinstance(node, ast.Call) else \
                _from_dict(node) if isinstance(node, ast.Dict) else None
            if pair is None:
                continue
            body, params = _literal(pair[0]), _literal(pair[1])
            if isinstance(body, _NotLiteral) or body is None:
                skipped += 1
                continue
            if isinstance(params, _NotLiteral):
                params = []
            found.append(SavedQuery(f"{path.name}:{node.lineno}", body, params or []))
    return found, skipped


def demo_queries() -> list[SavedQuery]:
    from appliance.demo import QUERIES_TO_CREATE

    return [SavedQuery(f"demo:{q['name']}", q["body"], q["parameters"])
            for q in QUERIES_TO_CREATE]
