"""Docs that must keep up with the code: every setting and every CLI verb is documented."""

from __future__ import annotations

from appliance.cli import build_parser
from appliance.settings import SCHEMA

from .conftest import ROOT


def test_every_setting_is_in_the_configuration_doc() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys
               if f"`{section}.{key}`" not in doc]
    assert missing == []


def test_every_verb_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [verb for verb in sub.choices if f"`{verb}" not in readme]  # type: ignore[attr-defined]
    assert missing == []
