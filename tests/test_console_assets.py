"""The console's assets without a browser: no HTML sink or eval anywhere in its code, no inline
script or style in its page, every module it imports is shipped (package data and the binary's
spec), and the server's routes, headers, caching and refusals for the console's paths."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from appliance.http.console_routes import CONSOLE_CSP, load_assets

from .conftest import ROOT, ServerProcess, http_request, tls_connection

STATIC = ROOT / "appliance" / "console" / "static"
SCRIPTS = sorted(STATIC.rglob("*.js"))
# Ways to turn a string into markup or code. None may appear in the console's JavaScript.
FORBIDDEN = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\s*\(|"
                       r"new\s+Function|setTimeout\s*\(\s*['\"`]|setInterval\s*\(\s*['\"`]|"
                       r"createContextualFragment|DOMParser|srcdoc|javascript:")


def test_there_is_javascript_to_check() -> None:
    assert len(SCRIPTS) >= 10
    assert {p.name for p in SCRIPTS} >= {"app.js", "api.js", "dom.js", "queries.js", "datasources.js"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(STATIC)))
def test_no_html_sink_or_eval_in_the_consoles_javascript(path: Path) -> None:
    found = [f"{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
             if FORBIDDEN.search(line)]
    assert found == [], f"{path.name} turns strings into markup or code"


def test_the_checker_catches_each_sink() -> None:
    for bad in ("el.innerHTML = x", "el.outerHTML=x", "el.insertAdjacentHTML('x', y)",
                "document.write(x)", "eval(x)", "new Function('a')", "setTimeout('x()', 1)",
                "a.href = 'javascript:x'"):
        assert FORBIDDEN.search(bad), bad


def test_the_page_has_no_inline_script_style_or_handler() -> None:
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html
    assert re.findall(r"\s(on[a-z]+|style)\s*=", html) == []
    assert 'src="/console/app.js"' in html and 'type="module"' in html


def test_nothing_is_kept_in_browser_storage() -> None:
    for path in SCRIPTS:
        text = path.read_text()
        assert "localStorage" not in text and "sessionStorage" not in text, path.name
        assert "document.cookie" not in text, path.name
        assert re.search(r"\bwindow\.[A-Za-z_$]+\s*=", text) is None, path.name


def test_every_import_is_a_shipped_asset() -> None:
    assets = load_assets()
    for path in SCRIPTS:
        name = str(path.relative_to(STATIC))
        for target in re.findall(r"from\s+'([^']+)'", path.read_text()):
            resolved = (Path(name).parent / target).as_posix()
            resolved = str(Path(resolved)).replace("pages/../", "")
            assert resolved in assets, f"{name} imports {target}, which is not shipped"


def test_package_data_and_the_binary_carry_every_asset() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["appliance.console"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            relative = str(path.relative_to(STATIC.parent))
            assert any(fnmatch(relative, p) for p in patterns), f"{relative} is not package data"
    spec = (ROOT / "build" / "appliance.spec").read_text()
    assert '"appliance/console/static"' in spec
    assert "playwright" in " ".join(config["project"]["optional-dependencies"]["test"])


def test_the_console_route_is_declared_public(tmp_path: Path) -> None:
    from appliance import settings
    from appliance.http import access
    from appliance.http.app import build_app
    from appliance.tls import TLSManager

    s = settings.load(env={}, flags={"state_dir": str(tmp_path / "state")})
    app = build_app(s, TLSManager(s.tls, tmp_path / "state"))
    table = {(m, p): r for m, p, r in access.route_table(app)}
    assert table[("GET", "/")].role == "public"
    assert table[("GET", "/console/{name}")].role == "public"


# --- served -----------------------------------------------------------------------------------


def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    with tls_connection("127.0.0.1", server.port, server.client_context()) as sock:
        return http_request(sock, "GET", path, f"127.0.0.1:{server.port}", headers)


def test_served_page_assets_headers_and_refusals(dev_server: ServerProcess) -> None:
    status, headers, body = get(dev_server, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"] == CONSOLE_CSP
    assert "'unsafe-inline'" not in CONSOLE_CSP and "'unsafe-eval'" not in CONSOLE_CSP
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert b"/console/app.js" in body
    etag = headers["etag"]
    status, again, _ = get(dev_server, "/", {"If-None-Match": etag})
    assert status == 304 and again["content-security-policy"] == CONSOLE_CSP

    status, headers, body = get(dev_server, "/console/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, headers, _ = get(dev_server, "/console/pages/queries.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, headers, _ = get(dev_server, "/console/app.css")
    assert status == 200 and headers["content-type"].startswith("text/css")

    # The API keeps its stricter policy.
    status, headers, _ = get(dev_server, "/api/v1/session")
    assert status == 401
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"

    for path in ("/console/index.html", "/console/../appliance.db", "/console/%2e%2e/appliance.db",
                 "/console/pages/../../console.py", "/console/console.py", "/console/",
                 "/console/app.js.map", "/console/static/app.js", "/console/__init__.py"):
        status, headers, body = get(dev_server, path)
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == "not_found", path
