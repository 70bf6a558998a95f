"""The SQL scanner: one pass over a stored query's text, by its dialect's rules, that finds the
`{{ name }}` bindings and refuses what could change where the server thinks a statement, a
literal or a comment ends.

Owns the lexical checks of every SQL kind: literals, quoted identifiers and comments (no binding
inside one), placeholders already in the text, one statement only, a binding glued to its
neighbours; each refusal with its line, column and a fix. Pure code: no I/O, no logging, and it
never sees a parameter's value.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from appliance.kinds.sql.dialect import SqlDialect
from appliance.parameters import BINDING_RE, InvalidQuery

_NAME_INSIDE_RE: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")
_DOLLAR_TAG_RE: Final = re.compile(
    r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_EXECUTABLE_COMMENT_RE: Final = re.compile(r"/\*[Mm]?!")
_WORD_RE: Final = re.compile(r"[A-Za-z_]+")


class Scanned(NamedTuple):
    """A statement's text around its bindings: `texts[k]` is the plain text before
    `bindings[k]` (its name and its offset in the source), `texts[-1]` the text after the last
    (up to a final ';' the dialect does not send)."""

    texts: list[str]
    bindings: list[tuple[str, int]]


def line_col(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column (in characters) of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def refusal(text: str, offset: int, problem: str, suggestion: str | None = None,
            parameter: str | None = None) -> InvalidQuery:
    """InvalidQuery placed at `offset` in `text`."""
    line, column = line_col(text, offset)
    return InvalidQuery(problem, line=line, column=column, suggestion=suggestion,
                        parameter=parameter)


def scan(text: str, dialect: SqlDialect) -> Scanned:
    """`text` split at its bindings, or InvalidQuery placed where the problem is."""
    if dialect.executable_comments:
        executable = _EXECUTABLE_COMMENT_RE.search(text)
        if executable:
            raise refusal(text, executable.start(), "an executable comment (/*! … */) in the "
                          "query", "the server runs what such a comment holds as SQL: write it "
                          "as plain SQL (and no '/*!' anywhere, even inside a literal)")
    return _Scanner(text, dialect).run()


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$"


class _Scanner:
    """One pass over SQL text: splits it into plain text and bindings, or raises InvalidQuery."""

    def __init__(self, text: str, dialect: SqlDialect) -> None:
        self.text = text
        self.dialect = dialect
        self.texts: list[str] = []
        self.bindings: list[tuple[str, int]] = []
        self.semicolon: int | None = None
        self.significant = False
        self.first = 0  # where the statement's first token starts (once `significant`)

    def fail(self, offset: int, problem: str, suggestion: str | None = None) -> InvalidQuery:
        return refusal(self.text, offset, problem, suggestion)

    def token(self, offset: int) -> None:
        """A significant token starts at `offset`: refuse it if a statement already ended."""
        if self.semicolon is not None:
            raise self.fail(offset, "more than one statement",
                            "a stored query runs exactly one statement; save each as its own "
                            "query (one trailing ';' is allowed)")
        if not self.significant:
            self.significant = True
            self.first = offset

    def run(self) -> Scanned:
        text, n, dialect = self.text, len(self.text), self.dialect
        plain = dialect.plain
        identifiers_in_double_quotes = dialect.double_quotes == "identifier"
        # Backslashes in every string literal, or only in E'…' ones.
        backslashes, e_strings = dialect.backslashes == "either", dialect.backslashes == "e-strings"
        backticks, brackets, dollars = dialect.backticks, dialect.brackets, dialect.dollar_quotes
        hashes, spaced_dashes = dialect.hash_comments, dialect.dash_comment_needs_space
        question_marks, markers, nul = dialect.question_marks, dialect.named_markers, dialect.nul
        start = 0  # start of the pending plain-text piece
        i = 0
        while i < n:
            m = plain.match(text, i)
            if m:
                chunk = m.group()
                if not chunk.isspace():
                    self.token(i + len(chunk) - len(chunk.lstrip()))
                i = m.end()
                continue
            c = text[i]
            nxt = text[i + 1] if i + 1 < n else ""
            if c == "'":
                self.token(i)
                i = self._quoted(i, "'", "string literal", backslash=backslashes or (
                    e_strings and i > 0 and text[i - 1] in "eE" and (
                        i < 2 or not _is_word(text[i - 2]))))
            elif c == '"':
                self.token(i)
                if identifiers_in_double_quotes:
                    i = self._quoted(i, '"', "quoted identifier")
                else:
                    i = self._quoted(i, '"', "string literal", backslash=backslashes)
            elif c == "-" and nxt == "-" and (
                    not spaced_dashes or i + 2 >= n or ord(text[i + 2]) <= 0x20):
                i = self._line_comment(i)  # MySQL's `-- ` needs a blank or a control character
            elif c == "/" and nxt == "*":
                i = self._block_comment(i)
            elif c == "{" and nxt == "{":
                m = BINDING_RE.match(text, i)
                if not m:
                    raise self.fail(i, "malformed binding",
                                    "write a binding as {{ name }}, where name is a declared "
                                    "parameter")
                self.token(i)
                self._check_adjacent(i, m.end())
                self.texts.append(text[start:i])
                self.bindings.append((m.group(1), i))
                i = start = m.end()
            elif c == "}" and nxt == "}":
                raise self.fail(i, "'}}' without a matching '{{'",
                                "write a binding as {{ name }}")
            elif c == ";":
                if not self.significant:
                    raise self.fail(i, "';' before any statement", "remove it")
                self.token(i)
                self.semicolon = i
                i += 1
            elif c == "$" and dollars:
                i = self._dollar(i)
            elif c == "`" and backticks:
                self.token(i)
                i = self._quoted(i, "`", "quoted identifier")
            elif c == "[" and brackets:
                self.token(i)
                end = text.find("]", i + 1)
                if end == -1:
                    raise self.fail(i, "unterminated quoted identifier", "close it with ]")
                self._no_binding(i, end, "quoted identifier")
                i = end + 1
            elif c == "#" and hashes:
                i = self._line_comment(i)
            elif (c == "?" and question_marks) or (c in markers and nxt and _is_word(nxt)):
                raise self.fail(i, "a placeholder is already in the text",
                                "use {{ name }} bindings instead of " + _markers(dialect))
            elif c == "\x00" and nul:
                raise self.fail(i, "a NUL character in the query", "remove it")
            else:
                if not c.isspace():
                    self.token(i)
                i += 1
        if not self.significant:
            raise InvalidQuery("the query is empty", suggestion="write one SQL statement")
        end = n if dialect.keeps_final_semicolon or self.semicolon is None else self.semicolon
        self.texts.append(text[start:end])
        if dialect.session_statements:
            word = _WORD_RE.match(text, self.first)
            if word and word.group().upper() in dialect.session_statements:
                raise self.fail(self.first, f"{word.group().upper()} is not allowed in a stored "
                                            "query",
                                "the appliance prepares every stored query itself: write the "
                                "statement with {{ name }} bindings instead of PREPARE and "
                                "EXECUTE, and a DO block as a function (a statement prepared or "
                                "dropped by one run would be seen by later runs on the same "
                                "connection)")
        return Scanned(self.texts, self.bindings)

    def _quoted(self, i: int, quote: str, what: str, *, backslash: bool = False) -> int:
        """Skip a quoted literal starting at i (doubled quotes escape; with `backslash`, so does
        a backslash); return the offset after it."""
        text, n = self.text, len(self.text)
        j = i + 1
        k = text.find(quote, j)  # the next quote; found again only once j has passed it
        while True:
            if backslash:
                b = text.find("\\", j, n if k == -1 else k)
                if b != -1:  # a backslash before the quote: it and the next character are a pair
                    if b + 1 < n and text[b + 1] == quote and self.dialect.backslashes == "either":
                        # It ends the literal in one server mode and not in the other.
                        raise self.fail(b, f"\\{quote} inside a {quote}…{quote} literal",
                                        f"write {quote}{quote} for a {quote} inside the literal: "
                                        f"the meaning of \\{quote} depends on the server's "
                                        "sql_mode (NO_BACKSLASH_ESCAPES)")
                    j = b + 2
                    if k != -1 and k < j:
                        k = text.find(quote, j)
                    continue
            if k == -1:
                raise self.fail(i, f"unterminated {what}", f"close it with {quote}")
            if k + 1 < n and text[k + 1] == quote:
                j = k + 2
                k = text.find(quote, j)
                continue
            self._no_binding(i, k, what)
            return k + 1

    def _line_comment(self, i: int) -> int:
        end = self.text.find("\n", i)
        end = len(self.text) if end == -1 else end
        self._no_binding(i, end, "comment")
        return end

    def _block_comment(self, i: int) -> int:
        text = self.text
        if not self.dialect.nested_comments:
            end = text.find("*/", i + 2)
            if end == -1:
                raise self.fail(i, "unterminated comment", self.dialect.unterminated_comment)
            self._no_binding(i, end, "comment")
            return end + 2
        depth, j = 1, i + 2
        while depth:
            close = text.find("*/", j)
            if close == -1:
                raise self.fail(i, "unterminated comment", self.dialect.unterminated_comment)
            opening = text.find("/*", j, close)
            if opening != -1:
                depth, j = depth + 1, opening + 2
            else:
                depth, j = depth - 1, close + 2
        self._no_binding(i, j, "comment")
        return j

    def _dollar(self, i: int) -> int:
        text = self.text
        if i > 0 and _is_word(text[i - 1]):
            return i + 1  # part of an identifier such as a$b
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt.isdigit():
            raise self.fail(i, "a positional placeholder is already in the text",
                            "use {{ name }} bindings instead of $1, $2, ...")
        m = _DOLLAR_TAG_RE.match(text, i)
        self.token(i)
        if not m:
            return i + 1
        tag = m.group()
        end = text.find(tag, m.end())
        if end == -1:
            raise self.fail(i, "unterminated dollar-quoted string", f"close it with {tag}")
        self._no_binding(i, end, "dollar-quoted string")
        return end + len(tag)

    def _no_binding(self, start: int, end: int, what: str) -> None:
        at = self.text.find("{{", start, end)
        if at == -1:
            return
        m = _NAME_INSIDE_RE.match(self.text, at)
        name = m.group(1) if m else "name"
        binding = f"{{{{ {name} }}}}"
        if what == "string literal":
            pattern = self.dialect.concat.replace("BINDING", binding)
            advice = (f"bindings are never substituted inside quotes: put {binding} where the "
                      f"whole literal was (for a pattern write {pattern})")
        elif what == "quoted identifier":
            quotes = "backticks" if self.dialect.identifier_quote == "`" else "quotes"
            advice = (f"declare '{name}' as type identifier with its choices and write {binding} "
                      f"without {quotes}")
        elif what == "dollar-quoted string":
            advice = ("a dollar-quoted body cannot take bindings; pass the value as an argument, "
                      f"e.g. f({binding})")
        else:
            advice = "remove the binding from the comment (or remove the comment)"
        raise self.fail(at, f"a binding inside a {what}", advice)

    def _check_adjacent(self, start: int, end: int) -> None:
        """Refuse a binding glued to something its placeholder could merge with."""
        text, sticky = self.text, self.dialect.sticky
        if ((start > 0 and (text[start - 1].isalnum() or text[start - 1] in sticky))
                or (end < len(text) and (text[end].isalnum() or text[end] in sticky))):
            raise self.fail(start, "a binding touches a word, number, quote or another binding",
                            "separate it with a space or an operator")


def _markers(dialect: SqlDialect) -> str:
    """The placeholders a dialect's text may already hold, for the advice: '?, :name or @name'."""
    names = (["?"] if dialect.question_marks else []) + [f"{c}name" for c in dialect.named_markers]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


__all__ = ["Scanned", "line_col", "refusal", "scan"]
