"""`serve --dev` ships a demo: a SQLite datasource and two queries a tester can run at once."""

from __future__ import annotations

from pathlib import Path

from .conftest import ServerProcess, start_server
from .support.cli import run_verb
from .support.json_api import request


def call(server: ServerProcess, token: str, method: str, path: str,
         body: dict | None = None) -> tuple[int, dict]:
    status, _, data = request(server, method, path, token=token, body=body, host="127.0.0.1")
    return status, data


def test_dev_demo_queries_run_with_typed_parameters(tmp_path: Path) -> None:
    first = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    first.stop()
    made = run_verb("tokens", "create", "admin", "--role", "viewer", "--state-dir",
                    str(tmp_path / ".appliance"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    token = next(word for word in made.stdout.split() if word.startswith("apl_"))

    server = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    try:
        status, listing = call(server, token, "GET", "/api/v1/queries")
        assert status == 200
        queries = {q["name"]: q for q in listing["queries"]}
        assert set(queries) >= {"demo products under a price", "demo products by sku"}
        by_sku = queries["demo products by sku"]
        assert set(by_sku) == {"id", "name", "description", "parameters"}  # view mode: no body, no datasource

        status, result = call(server, token, "POST", f"/api/v1/queries/{by_sku['id']}/run",
                              {"params": {"skus": ["0001", "0777", "777"]}})
        assert status == 200, result
        assert [row[1] for row in result["rows"]] == ["0001", "0777"]  # "777" is not "0777"
        assert result["row_count"] == 2 and result["truncated"] is False

        cheap = queries["demo products under a price"]
        status, result = call(server, token, "POST", f"/api/v1/queries/{cheap['id']}/run",
                              {"params": {}})
        assert status == 200 and result["row_count"] == 3  # the default, 20
        status, result = call(server, token, "POST", f"/api/v1/queries/{cheap['id']}/run",
                              {"params": {"max_price": "20 OR 1=1"}})
        assert status == 422 and "max_price" in result["error"]["message"]
    finally:
        server.stop()
    # A second start does not create the demo twice.
    again = start_server(["serve", "--dev", "--listen", "127.0.0.1:0"], cwd=tmp_path)
    try:
        status, listing = call(again, token, "GET", "/api/v1/queries")
        names = [q["name"] for q in listing["queries"]]
        assert names.count("demo products by sku") == 1
    finally:
        again.stop()
