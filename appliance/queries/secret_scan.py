"""Secret scanning of a query as it is saved: the rules (known key formats, and random-looking
literals in credential positions) and the walk over a query's body, parameter defaults and
description, for SQL text and JSON bodies alike.

Owns the rules and `scan_query`. Pure code: no I/O, no logging. Never returns, logs or keeps the
matched text: a finding names the place and the rule, a hint (`AKIA…(20 chars)`: at most the
format's public prefix) and a fingerprint (a keyed HMAC of rule, place and text).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from appliance.parameters import BINDING_RE

MAX_FINDINGS: Final = 100  # the last is `too_many`: the rest of the query is not scanned
# Findings no admin can allow: they say that something was not scanned.
UNALLOWABLE: Final = frozenset({"too_deep", "too_many"})
MAX_DEPTH: Final = 200  # deeper JSON is not walked further (the compilers refuse past 64)
KEY_LABEL: Final = b"queries/secret-finding-fingerprint"  # the key's label (secret_findings)
FINGERPRINT_CHARS: Final = 32  # 128 bits of HMAC-SHA256, hex

ADVICE: Final = {
    "sql": "keep credentials out of the SQL text: the datasource's secrets (secrets.password) "
           "sign in to the database; a value the query needs: declare a parameter and bind it "
           "as {{ name }}, sent at run time",
    "json": "move it into the datasource's secrets: a REST datasource sends it itself with "
            "auth = bearer (secrets.token), basic (username, secrets.password) or header "
            "(header_name, secrets.api_key); a value the query needs: declare a parameter and "
            "bind it as {{ name }}, sent at run time",
    "default": "remove the default: a parameter's default is stored in the clear; send the "
               "value at run time, or keep the credential in the datasource's secrets",
    "description": "remove it from the description: keep credentials in the datasource's "
                   "secrets",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One credential found in a query. Holds no part of the text beyond `hint`."""

    rule: str  # stable word, e.g. "aws_access_key_id"
    title: str  # in words: "an AWS access key id"
    field: str  # the API's field: "body", "parameters[0].default", "description"
    place: str  # "line 3, column 14", "headers.Authorization", "parameter 'token'"
    line: int | None
    column: int | None
    hint: str  # "AKIA…(20 chars)" or "…(12 chars)"
    fingerprint: str  # HMAC(key, rule, field, place, text), hex
    advice: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "title": self.title, "field": self.field,
                               "place": self.place, "hint": self.hint,
                               "fingerprint": self.fingerprint}
        if self.line is not None:
            out["line"] = self.line
            out["column"] = self.column
        return out

    @property
    def where(self) -> str:
        """The place in words: `line 2, column 9` (a SQL body, as every SQL error starts),
        `body headers.Authorization`, `parameter 'x' default`, `description, line 1, column 5`."""
        if self.field == "body":
            return self.place if self.line is not None else f"body {self.place}"
        if self.field.endswith(".default"):
            return f"{self.place} default"
        return f"{self.field}, {self.place}"

    def describe(self) -> str:
        return f"{self.where}: {self.title} ({self.hint})"


# --- known formats ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """A known format. `anchors`: lower-case substrings one of which any match contains (a
    cheap test before the regex runs). The regex's group `secret` is the credential (the
    whole match without one); group `prefix`, if any, is the format's public prefix, the only
    part a hint shows. `check`: a further test of the secret (a JWT's header decodes)."""

    name: str
    title: str
    anchors: tuple[str, ...]
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    whole: bool = False  # the credential is the whole match (its prefix included)


def _jwt_header(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


def _not_placeholder(value: str) -> bool:
    return not (_is_placeholder(value) or value.startswith("{{"))


_B = r"(?<![A-Za-z0-9_\-])"  # the start of a token
_E = r"(?![A-Za-z0-9_\-])"  # its end

RULES: Final[tuple[Rule, ...]] = (
    Rule("private_key", "a private key block", ("-----begin",), re.compile(
        r"(?P<prefix>-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----)"
        r"[^-]{0,20000}"), whole=True),
    Rule("aws_access_key_id", "an AWS access key id", ("akia", "asia", "abia", "acca"),
         re.compile(_B + r"(?P<secret>(?P<prefix>AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})" + _E)),
    Rule("aws_secret_access_key", "an AWS secret access key", ("secret",), re.compile(
        r"(?i:secret_?access_?key|aws_?secret(?:_?key)?)[\"'\s]{0,3}[:=>]{1,2}[\"'\s]{0,3}"
        r"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")),
    Rule("gcp_api_key", "a Google API key", ("aiza",),
         re.compile(_B + r"(?P<secret>(?P<prefix>AIza)[0-9A-Za-z_\-]{35})" + _E)),
    Rule("azure_storage_key", "an Azure storage account key", ("accountkey",), re.compile(
        r"(?i:AccountKey)=(?P<secret>[A-Za-z0-9+/]{86}==)")),
    Rule("azure_sas_signature", "an Azure shared access signature", ("sig=",), re.compile(
        r"[?&;]sig=(?P<secret>[A-Za-z0-9%+/]{40,}(?:%3D|=){0,2})")),
    Rule("github_token", "a GitHub token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                                              "github_pat_"), re.compile(
        _B + r"(?P<secret>(?P<prefix>gh[pousr]_)[A-Za-z0-9]{36}"
        r"|(?P<prefix2>github_pat_)[A-Za-z0-9]{22}_[A-Za-z0-9]{59})" + _E)),
    Rule("gitlab_token", "a GitLab token", ("glpat-", "gldt-", "glrt-", "glptt-", "glsoat-",
                                              "glcbt-"), re.compile(
        _B + r"(?P<secret>(?P<prefix>gl(?:pat|dt|rt|ptt|soat|cbt)-)[A-Za-z0-9_\-]{20,})" + _E)),
    Rule("slack_token", "a Slack token", ("xox", "xapp-"), re.compile(
        _B + r"(?P<secret>(?P<prefix>xox[abposre]-|xapp-)[0-9]+-[A-Za-z0-9\-]{8,})" + _E)),
    Rule("slack_webhook", "a Slack webhook URL", ("hooks.slack.com",), re.compile(
        r"(?P<prefix>hooks\.slack\.com/services/)"
        r"(?P<secret>T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,})")),
    Rule("stripe_key", "a Stripe secret key", ("sk_live_", "sk_test_", "rk_live_", "rk_test_",
                                                 "whsec_"), re.compile(
        _B + r"(?P<secret>(?P<prefix>[sr]k_(?:live|test)_|whsec_)[A-Za-z0-9]{24,})" + _E)),
    Rule("twilio_api_key", "a Twilio API key", ("sk",), re.compile(
        _B + r"(?P<secret>(?P<prefix>SK)[0-9a-f]{32})" + _E)),
    Rule("sendgrid_api_key", "a SendGrid API key", ("sg.",), re.compile(
        _B + r"(?P<secret>(?P<prefix>SG\.)[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})" + _E)),
    Rule("anthropic_api_key", "an Anthropic API key", ("sk-ant-",), re.compile(
        _B + r"(?P<secret>(?P<prefix>sk-ant-)[a-z]+[0-9]{2}-[A-Za-z0-9_\-]{32,})" + _E)),
    Rule("openai_api_key", "an OpenAI API key", ("sk-",), re.compile(
        _B + r"(?P<secret>(?P<prefix>sk-)(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}"
        r"|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}))" + _E)),
    Rule("jwt", "a JSON Web Token", ("eyj",), re.compile(
        _B + r"(?P<secret>(?P<prefix>eyJ)[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}"
        r"\.[A-Za-z0-9_\-]{16,})" + _E), check=_jwt_header),
    Rule("url_password", "a password in a URL (scheme://user:password@host)", ("://",),
         re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s:/?#@'\"]{1,256}:"
                    r"(?P<secret>[^\s/?#@'\"]{1,256})@[A-Za-z0-9\[]"), check=_not_placeholder),
    Rule("connection_password", "a password in a connection string (password=…)",
         ("password=", "pwd=", "passwd="), re.compile(
             r"(?<![A-Za-z0-9_])(?i:password|passwd|pwd)=(?P<secret>[^\s;'\"&)]{1,256})"),
         check=_not_placeholder),
)


# --- credential positions (a key, header or parameter name says what the value is) -------------

_PASSWORD_NAMES: Final = frozenset({"password", "passwd", "pwd", "pass", "passphrase", "secret",
                                    "clientsecret", "privatekey", "secretkey", "apisecret"})
_TOKEN_SUFFIXES: Final = ("token", "secret", "password", "passwd", "apikey", "accesskey",
                          "privatekey", "secretkey", "credential", "credentials", "signature")
_HEADER_SUFFIXES: Final = ("-token", "-key", "apikey", "-secret", "-password", "-signature",
                           "-auth")
_HEADER_IGNORED: Final = ("idempotency", "sec-websocket", "cache", "public-key")
_PLACEHOLDER_RE: Final = re.compile(
    r":[A-Za-z_][A-Za-z0-9_]*|\$[0-9]+|\?|%s|\.{3}|…|%\([A-Za-z_]+\)s|\$\{[^}]*\}|<[^<>]*>|"
    r"\*+|[xX]+|"
    r"(?i:password|passwd|pass|pwd|secret|token|redacted|changeme_?later|none|null|empty)")


_AUTH_SPLIT_RE: Final = re.compile(r"[\s,]+")
_AUTH_PARAM_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*=")  # `name=` before a value


def _is_placeholder(value: str) -> bool:
    return _PLACEHOLDER_RE.fullmatch(value) is not None or BINDING_RE.fullmatch(value) is not None


def _normal(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def looks_random(text: str) -> bool:
    """A literal that could be a key or token: no space, 16+ characters (12+ with letters and
    digits mixed), and at least 3 bits of entropy per character (English words have less;
    a hex or base64 key has 3.5 to 6)."""
    if len(text) < 12 or any(c.isspace() for c in text):
        return False
    classes = sum((any(c.islower() for c in text), any(c.isupper() for c in text),
                   any(c.isdigit() for c in text), any(not c.isalnum() for c in text)))
    if len(text) < 16 and classes < 3:
        return False
    return classes >= 2 and entropy(text) >= 3.0


def _literals(value: str) -> list[str]:
    """The literal pieces of a template string (bindings removed), without placeholders."""
    return [piece.strip() for piece in BINDING_RE.split(value)[::2]
            if piece.strip() and not _is_placeholder(piece.strip())]


def _credential_key(name: str) -> str | None:
    """'password' or 'token' if a JSON key or parameter name says its value is a credential."""
    normal = _normal(name)
    if normal in _PASSWORD_NAMES:
        return "password"
    if normal.endswith(_TOKEN_SUFFIXES) or normal in ("apikey", "auth", "authorization",
                                                      "cookie", "bearer", "key"):
        return "token"
    return None


def _credential_header(name: str) -> str | None:
    """'authorization', 'cookie' or 'token' for a header whose value is a credential."""
    lower = name.lower()
    if any(word in lower for word in _HEADER_IGNORED):
        return None
    if lower in ("authorization", "proxy-authorization", "x-authorization"):
        return "authorization"
    if lower in ("cookie", "set-cookie"):
        return "cookie"
    if lower.endswith(_HEADER_SUFFIXES) or _normal(lower) in ("apikey", "xapikey", "token",
                                                             "secret", "password"):
        return "token"
    return None


# --- the scan -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hit:
    rule: str
    title: str
    start: int  # in the scanned string
    # The credential: used for the fingerprint, then dropped; never in a repr.
    text: str = dataclasses.field(repr=False)
    prefix: str = ""  # the public prefix shown in the hint ("" if none)


def _active(texts: Sequence[str]) -> tuple[Rule, ...]:
    """The rules whose anchors occur anywhere in `texts` (one pass per anchor over them all,
    so that a JSON body's thousand short strings do not each pay for every rule)."""
    joined = "\x00".join(texts).lower()
    return tuple(rule for rule in RULES if any(anchor in joined for anchor in rule.anchors))


def _known(text: str, rules: Sequence[Rule] = RULES) -> Iterator[_Hit]:
    if not rules:
        return
    lowered = text.lower()
    for rule in rules:
        if not any(anchor in lowered for anchor in rule.anchors):
            continue
        groups = rule.pattern.groupindex
        for match in rule.pattern.finditer(text):
            group = "secret" if "secret" in groups and not rule.whole else 0
            secret = match.group(group)
            if rule.check is not None and not rule.check(secret):
                continue
            prefix = next((match.group(g) for g in ("prefix", "prefix2")
                           if g in groups and match.group(g)), "")
            yield _Hit(rule.name, rule.title, match.start(group), secret, prefix)


def _positional(kind: str, value: str) -> Iterator[_Hit]:
    """Credential-looking literals in a value whose key or header name says it is one."""
    if kind == "authorization":
        # After the scheme word, every literal value: `Bearer abc…`, `Basic dXNl…`, and each
        # `name=value` of a structured scheme (AWS4-HMAC-SHA256 Credential=…, Signature=…).
        pieces = _literals(value)
        if len(pieces) > 1 or (pieces and " " in pieces[0]):  # the first starts with a scheme
            pieces[0] = pieces[0].strip().partition(" ")[2]
        for piece in pieces:
            for token in _AUTH_SPLIT_RE.split(piece):
                if _AUTH_PARAM_RE.match(token):  # a parameter: only a random-looking value
                    credential = token.partition("=")[2]
                    if not looks_random(credential):
                        continue
                else:
                    credential = token
                if len(credential) >= 8 and not _is_placeholder(credential):
                    yield _Hit("credential_header", "a credential in an Authorization header",
                               value.find(credential), credential, "")
        return
    if kind == "cookie":
        for part in value.split(";"):
            _, _, cookie = part.partition("=")
            for literal in _literals(cookie):
                if looks_random(literal):
                    yield _Hit("credential_cookie", "a session cookie", value.find(literal),
                               literal, "")
        return
    for literal in _literals(value):
        if kind == "password" and len(literal) >= 4:
            yield _Hit("credential_literal", "a password or secret written as a literal",
                       value.find(literal), literal, "")
        elif kind == "token" and looks_random(literal):
            yield _Hit("credential_literal", "a random-looking key or token in a credential "
                       "position", value.find(literal), literal, "")


class _Scan:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.findings: list[Finding] = []
        self.seen: set[tuple[str, str, str]] = set()
        self.full = False  # MAX_FINDINGS reached: the rest is not scanned
        # Strings of a JSON value waiting for `flush`: (text, field, place, advice, position).
        self.pending: list[tuple[str, str, str, str, str | None]] = []

    def add(self, hit: _Hit, field: str, place: str, line: int | None, column: int | None,
            advice: str) -> None:
        marker = (field, place, hit.text)
        if marker in self.seen or self.full:
            return  # one finding per credential and place: the first rule that names it
        if len(self.findings) == MAX_FINDINGS - 1:
            self.full = True
            hit = _Hit("too_many", f"more than {MAX_FINDINGS - 1} findings: the rest is not "
                       "scanned", 0, "", "")
        self.seen.add(marker)
        mac = hmac.new(self.key, b"\x00".join(
            part.encode("utf-8", "surrogatepass") for part in (hit.rule, field, place, hit.text)),
            hashlib.sha256).hexdigest()[:FINGERPRINT_CHARS]
        # A format's public prefix only, and only when it is less than half of the text.
        shown = hit.prefix if len(hit.prefix) <= len(hit.text) // 2 else ""
        hint = f"{shown}…({len(hit.text)} chars)" if hit.text else "-"
        self.findings.append(Finding(hit.rule, hit.title, field, place, line, column, hint,
                                     mac, advice))

    def text(self, text: str, field: str, advice: str) -> None:
        """SQL text (or any multi-line text): places are line and column (counted once, as
        the hits go forward: a body with many hits stays linear)."""
        line, line_start, counted = 1, 0, 0
        for hit in sorted(_known(text), key=lambda h: h.start):
            line += text.count("\n", counted, hit.start)
            counted = hit.start
            line_start = text.rfind("\n", line_start, hit.start) + 1 or line_start
            column = hit.start - line_start + 1
            self.add(hit, field, f"line {line}, column {column}", line, column, advice)
            if self.full:
                return

    def string(self, value: str, field: str, place: str, advice: str,
               position: str | None) -> None:
        """Queued: `flush` scans the queued strings, with the rules any of them may match."""
        self.pending.append((value, field, place, advice, position))

    def flush(self) -> None:
        rules = _active([value for value, *_ in self.pending])
        for value, field, place, advice, position in self.pending:
            for hit in _known(value, rules):
                self.add(hit, field, place, None, None, advice)
            if position is not None:
                for hit in _positional(position, value):
                    self.add(hit, field, place, None, None, advice)
        self.pending.clear()

    def json(self, node: Any, field: str, path: str, advice: str, position: str | None,
             in_headers: bool, depth: int) -> None:
        if depth > MAX_DEPTH:
            # Not walked further (recursion stays far below Python's limit), so not passed
            # either: what was not scanned is a finding (the compilers refuse past 64 anyway).
            self.add(_Hit("too_deep", f"a value nested deeper than {MAX_DEPTH} levels, which "
                          "is not scanned", 0, "", ""), field, path or "body", None, None,
                     "flatten the value")
            return
        if isinstance(node, str):
            self.string(node, field, path or "body", advice, position)
        elif isinstance(node, dict):
            for key, child in node.items():
                name = str(key)
                where = f"{path}.{name[:40]}" if path else name[:40]
                kind = _credential_header(name) if in_headers else _credential_key(name)
                self.json(child, field, where, advice, kind, name.lower() == "headers",
                          depth + 1)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                self.json(child, field, f"{path}[{index}]", advice, position, False, depth + 1)


def scan_query(body_language: str, body: Any, parameters: Any, description: Any,
               key: bytes) -> list[Finding]:
    """Every credential found in a query about to be saved (or already stored): its body (SQL
    text when `body_language` is "sql", else a JSON value), its parameters' defaults and its
    description. Each finding's fingerprint is keyed by `key`. Shapes the compilers refuse
    (a non-string SQL body, a declaration that is not an object) are skipped, not raised."""
    scan = _Scan(key)
    if body_language == "sql":
        if isinstance(body, str):
            scan.text(body, "body", ADVICE["sql"])
    else:
        scan.json(body, "body", "", ADVICE["json"], None, False, 0)
        scan.flush()
    if isinstance(parameters, Sequence) and not isinstance(parameters, str):
        for index, declaration in enumerate(parameters):
            if not isinstance(declaration, dict) or "default" not in declaration:
                continue
            name = declaration.get("name")
            label = f"parameter '{name[:63]}'" if isinstance(name, str) else \
                f"parameter {index + 1}"
            kind = _credential_key(name) if isinstance(name, str) else None
            scan.json(declaration["default"], f"parameters[{index}].default", label,
                      ADVICE["default"], kind, False, 1)
        scan.flush()
    if isinstance(description, str):
        scan.text(description, "description", ADVICE["description"])
    return scan.findings


def fingerprint_key(root_key: bytes) -> bytes:
    """The fingerprints' key, derived from the keyring's root key (stable across data-key
    rotation and instance-secret changes; never stored)."""
    return hmac.new(root_key, b"appliance/" + KEY_LABEL, hashlib.sha256).digest()
