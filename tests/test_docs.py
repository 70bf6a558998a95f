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
    missing = [verb for verb in sub.choices if f"`{verb}" not in readme]  # type: ignore[attr-defined]  # argparse's subparsers action has choices
    assert missing == []


def _shell_lines(text: str) -> list[str]:
    """The commands in a markdown text's fenced code blocks, continuation lines joined."""
    lines: list[str] = []
    fenced = False
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def _appliance_commands(line: str) -> list[list[str]]:
    """Each `appliance …` invocation in a shell line: the words after the program."""
    import shlex

    verbs = set(_verbs())
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError:
        return []
    commands: list[list[str]] = []
    current: list[str] | None = None
    for index, word in enumerate(words):
        if word in (";", "&&", "||", "|", "&"):
            if current is not None:
                commands.append(current)
            current = None
            continue
        if current is not None:
            current.append(word)
        elif word.rpartition("/")[2] == "appliance" and index + 1 < len(words) and (
                words[index + 1] in verbs or words[index + 1].startswith("--")):
            current = []
    if current is not None:
        commands.append(current)
    return commands


def _verbs() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)  # type: ignore[attr-defined]  # argparse's subparsers action has choices


def test_every_command_the_docs_show_parses() -> None:
    """README.md and docs/*.md show only `appliance` commands whose verb and flags exist."""
    import contextlib
    import io

    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    seen = 0
    bad: list[str] = []
    for path in files:
        for line in _shell_lines(path.read_text()):
            for argv in _appliance_commands(line):
                seen += 1
                if {"--help", "-h", "--version"} & set(argv):
                    continue
                stderr = io.StringIO()
                try:
                    with contextlib.redirect_stderr(stderr):
                        build_parser().parse_args(argv)
                except SystemExit:
                    bad.append(f"{path.name}: appliance {' '.join(argv)}: "
                               f"{stderr.getvalue().strip().splitlines()[-1]}")
    assert bad == []
    assert seen >= 20  # the extraction finds the docs' commands
