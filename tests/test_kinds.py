"""The registry of datasource kinds: every kind registered once, in the API's order; each kind's
config checked by its declared fields (defaults, conditions, errors naming the key); the
destination a secret is sealed for unchanged byte for byte; the description the console reads;
and no driver imported until an engine is made."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from appliance.datasources.config import check_config, check_secrets, required_secret
from appliance.datasources.destination import binding, changed_keys
from appliance.kinds import Field, Kind, all_kinds, kind_named, register
from appliance.kinds.registry import check_declaration
from appliance.kinds.schema import InvalidDatasource
from tests.conftest import ROOT

# Sealed secrets are bound to these bytes: a change here makes every stored secret unopenable.
SEALED_FOR = {
    "postgres": ({"host": "db.example", "database": "app", "user": "u"},
                 b'{"allow_md5":false,"database":"app","host":"db.example","kind":"postgres",'
                 b'"port":5432,"tls":"verify-full","user":"u"}'),
    "mongodb": ({"host": "m.example", "database": "app"},
                b'{"allow_scram_sha1":false,"database":"app","host":"m.example",'
                b'"kind":"mongodb","port":27017,"tls":"verify-full","user":""}'),
    "rest": ({"base_url": "https://API.example.com:8443/v1/", "auth": "header",
              "header_name": "X-Key"},
             b'{"auth":"header","header_name":"X-Key","kind":"rest",'
             b'"origin":"https://api.example.com:8443"}'),
    "sqlite": ({"path": "/srv/x.db"}, b'{"kind":"sqlite","path":"/srv/x.db"}'),
    "mysql": ({"host": "db.example", "database": "app", "user": "u"},
              b'{"allow_password_without_verified_tls":false,"database":"app","host":"db.example",'
              b'"kind":"mysql","port":3306,"tls":"verify-full","user":"u"}'),
}


def test_every_kind_is_registered_once_in_the_api_order() -> None:
    assert [kind.name for kind in all_kinds()] == ["postgres", "mongodb", "rest", "sqlite",
                                                   "mysql"]
    assert kind_named("postgres") is all_kinds()[0]
    assert kind_named("oracle") is None and kind_named(None) is None
    with pytest.raises(ValueError, match="registered twice"):
        @register
        class Again(Kind):  # refused before it is kept
            name = "postgres"


@pytest.mark.parametrize("kind", sorted(SEALED_FOR))
def test_the_destination_is_sealed_as_before(kind: str) -> None:
    raw, sealed = SEALED_FOR[kind]
    assert binding(kind, check_config(kind, raw)) == sealed


def test_rest_checks_by_its_fields_and_conditions() -> None:
    base = {"base_url": "https://api.example.com"}
    assert check_config("rest", base)["auth"] == "none"
    assert "username" not in check_config("rest", {**base, "username": "kept out"})
    with pytest.raises(InvalidDatasource) as caught:
        check_config("rest", {**base, "auth": "basic"})
    assert caught.value.field == "config.username"
    with pytest.raises(InvalidDatasource, match="framing header"):
        check_config("rest", {**base, "auth": "header", "header_name": "Cookie"})
    with pytest.raises(InvalidDatasource) as caught:  # RFC 7617: no colon in a user-id
        check_config("rest", {**base, "auth": "basic", "username": "ad:min"})
    assert caught.value.field == "config.username"
    with pytest.raises(InvalidDatasource, match="max_redirects must be an integer from 0 to 20"):
        check_config("rest", {**base, "max_redirects": 21})
    assert required_secret("rest", check_config("rest", {**base, "auth": "bearer"})) == "token"
    assert required_secret("postgres", {}) is None
    with pytest.raises(InvalidDatasource, match="rest datasources take these secrets: "
                                                "api_key, password, token"):
        check_secrets("rest", {}, {"nope": "x"}, partial=False)
    moved = changed_keys("rest", check_config("rest", base),
                         check_config("rest", {"base_url": "https://other.example"}))
    assert moved == ["base_url"]


def test_shared_checks_name_the_key() -> None:
    with pytest.raises(InvalidDatasource) as caught:
        check_config("postgres", {"host": "h", "database": "d", "user": "u", "tls": "x"})
    assert caught.value.field == "config.tls"
    with pytest.raises(InvalidDatasource, match=r"config\.port must be an integer from 1 to 65535"):
        check_config("mongodb", {"host": "h", "database": "d", "port": 0})
    with pytest.raises(InvalidDatasource, match="unknown key"):
        check_config("sqlite", {"path": "/x.db", "host": "h"})
    assert check_config("mongodb", {"host": "h", "database": "d"})["user"] == ""
    with pytest.raises(InvalidDatasource):  # given, it must be a user
        check_config("mongodb", {"host": "h", "database": "d", "user": ""})


def test_the_description_is_data_the_console_can_draw() -> None:
    kinds = {kind.name: kind.describe() for kind in all_kinds()}
    assert [kinds[name]["title"] for name in kinds] == [
        "PostgreSQL", "MongoDB", "REST API", "SQLite file", "MySQL / MariaDB"]
    rest = {field["name"]: field for field in kinds["rest"]["fields"]}
    assert rest["username"]["when"] == {"auth": "basic"}
    assert rest["base_url"]["destination"] == "origin"
    assert rest["max_redirects"] == {"name": "max_redirects", "label": "At most this many "
                                     "redirects", "type": "integer", "default": 5, "min": 0,
                                     "max": 20}
    assert kinds["rest"]["secrets"][0] == {"name": "token", "label": "Bearer token",
                                           "when": {"auth": "bearer"}, "required": True}
    assert kinds["sqlite"]["secrets"] == []
    pg = {field["name"]: field for field in kinds["postgres"]["fields"]}
    assert [c["value"] for c in pg["tls"]["choices"]] == ["verify-full", "require", "disable"]
    my = {field["name"]: field for field in kinds["mysql"]["fields"]}
    assert [c["value"] for c in my["tls"]["choices"]] == ["verify-full", "require", "disable"]
    assert my["tls"]["default"] == "verify-full" and my["port"]["default"] == 3306
    assert my["read_only"]["default"] is True
    assert kinds["mysql"]["secrets"] == [{"name": "password", "label": "Password"}]


def test_each_kind_says_where_it_points_and_what_its_body_is() -> None:
    """The console's list and query editor read these instead of testing a kind's name."""
    kinds = {kind.name: kind.describe() for kind in all_kinds()}
    assert {name: (kind["where"], kind["body"]) for name, kind in kinds.items()} == {
        "postgres": ("{host}:{port}/{database}", "sql"),
        "mongodb": ("{host}:{port}/{database}", "json"),
        "rest": ("{base_url}", "json"),
        "sqlite": ("{path}", "sql"),
        "mysql": ("{host}:{port}/{database}", "sql"),
    }


def _kind(where: object = "{host}", body: object = "sql") -> type[Kind]:
    """A kind as a newcomer might declare it (never registered: the registry stays as it is)."""

    class Warehouse(Kind):
        name = "warehouse"
        title = "Warehouse"
        fields = (Field("host", "Host"), Field("shard", "Shard", type="integer", default=1))

        def compile(self, body: object, parameters: object) -> Any:
            raise NotImplementedError

        def make_engine(self, target: object, dialer: object, state_dir: object) -> Any:
            raise NotImplementedError

    Warehouse.where = where  # type: ignore[assignment]  # bad values are this test's point
    Warehouse.body = body  # type: ignore[assignment]  # bad values are this test's point
    return Warehouse


def test_a_new_kind_declares_where_and_body_and_the_api_shows_them() -> None:
    warehouse = _kind("{host} (shard {shard})", "json")
    check_declaration(warehouse)  # does not raise
    described = warehouse().describe()
    assert (described["where"], described["body"]) == ("{host} (shard {shard})", "json")


@pytest.mark.parametrize(("where", "body", "message"), [
    ("{host}", "yaml", "body must be one of sql, json"),
    ("{host}", None, "body must be one of sql, json"),
    ("", "sql", "where must name its config keys"),
    (None, "sql", "where must name its config keys"),
    ("{hostname}", "sql", r"\{hostname\} is not one of its config keys \(host, shard\)"),
    ("{host!r}", "sql", "is not one of its config keys"),
    ("{shard:>5}", "sql", "is not one of its config keys"),
    ("{host", "sql", "where '{host'"),
])
def test_a_kind_whose_where_or_body_the_console_cannot_use_is_refused(
        where: object, body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register(_kind(where, body))
    assert kind_named("warehouse") is None


def test_no_driver_is_imported_until_an_engine_is_made() -> None:
    code = ("import sys, appliance.http.app, appliance.kinds\n"
            "print(sorted(m for m in ('asyncpg', 'pymongo', 'asyncmy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"
