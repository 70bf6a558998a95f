"""Durations in results are exact ISO 8601 (`PT<seconds>S`, every digit): a unit test at the
boundaries of Python's timedelta, then MariaDB's TIME and PostgreSQL's interval through the real
API, at their own boundaries (MySQL TIME -838:59:59 used to come back as `PT-3.0204e+06S`)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from appliance.queries.result_json import dumps, iso_duration, iso_seconds
from tests.conftest import PG_PASSWORD, PostgresServer
from tests.support.mariadb import NATIVE_PASSWORD, MariaDBServer
from tests.support.queries import as_role, create_datasource, create_query, proxy, run

ISO_SECONDS = re.compile(r"PT-?(0|[1-9]\d*)(\.\d{0,5}[1-9])?S")


@pytest.mark.parametrize(("value", "text"), [
    (dt.timedelta(0), "PT0S"),
    (dt.timedelta(microseconds=1), "PT0.000001S"),
    (dt.timedelta(microseconds=-1), "PT-0.000001S"),
    (dt.timedelta(seconds=-45296, microseconds=-500000), "PT-45296.5S"),
    (dt.timedelta(seconds=1_000_000), "PT1000000S"),  # `:g` wrote 1e+06
    (-dt.timedelta(hours=838, minutes=59, seconds=59), "PT-3020399S"),  # MySQL TIME's least
    (dt.timedelta(hours=838, minutes=59, seconds=59), "PT3020399S"),
    (dt.timedelta(days=1, microseconds=10), "PT86400.00001S"),
    (dt.timedelta.max, "PT86399999999999.999999S"),  # more digits than a float holds
    (dt.timedelta.min, "PT-86399999913600S"),
    (dt.timedelta.min + dt.timedelta(microseconds=1), "PT-86399999913599.999999S"),
])
def test_iso_duration_keeps_every_digit(value: dt.timedelta, text: str) -> None:
    assert iso_duration(value) == text
    assert dumps([value]) == f'["{text}"]'
    assert ISO_SECONDS.fullmatch(text)


def test_iso_duration_round_trips() -> None:
    """Read back (seconds and microseconds as integers) it is the same timedelta."""
    for micros in (0, 1, -1, 999_999, -999_999, 10**6, 86_400 * 10**6 - 1, 2**53 + 1,
                   -(2**53 + 1), dt.timedelta.max // dt.timedelta(microseconds=1)):
        value = dt.timedelta(microseconds=micros)
        match = ISO_SECONDS.fullmatch(iso_duration(value))
        assert match, value
        text = iso_duration(value)[2:-1]
        negative = text.startswith("-")
        whole, _, fraction = text.lstrip("-").partition(".")
        back = int(whole) * 10**6 + int((fraction or "0").ljust(6, "0"))
        assert (-back if negative else back) == micros


# kind -> (SELECT at the type's boundaries, what JSON says of each column). PostgreSQL's months
# stay months (asyncpg's own decoder made a month 30 days and overflowed past 2^31 days).
DATABASES: dict[str, tuple[str, list[str]]] = {
    "mysql": ("SELECT CAST('-838:59:59' AS TIME), CAST('838:59:59' AS TIME), "
              "CAST('-00:00:00.000001' AS TIME(6)), CAST('277:46:40' AS TIME), "
              "CAST('838:59:58.999999' AS TIME(6)), CAST('00:00:00' AS TIME)",
              ["PT-3020399S", "PT3020399S", "PT-0.000001S", "PT1000000S", "PT3020398.999999S",
               "PT0S"]),
    "postgres": ("SELECT interval '1000000 seconds', interval '-1 microsecond', "
                 "interval '123456789 days 23:59:59.999999', interval '-2 days -00:00:00.5', "
                 "interval '1 day 00:00:00.00001', interval '0', interval '1 month', "
                 "interval '-1 year 2 days 00:00:01', interval '178000000 years'",
                 ["PT1000000S", "PT-0.000001S", "PT10666666655999.999999S", "PT-172800.5S",
                  "PT86400.00001S", "PT0S", "P1M", "P-12MT172801S", "P2136000000M"]),
}


def datasource(kind: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], str]:
    """The config and password of a datasource on the session's real server of `kind`."""
    if kind == "mysql":
        maria: MariaDBServer = request.getfixturevalue("mariadb_server")
        return maria.datasource_config(allow_password_without_verified_tls=True), NATIVE_PASSWORD
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    return {"port": pg.port, "database": "appdb", "user": "app"}, PG_PASSWORD


@pytest.mark.parametrize("kind", sorted(DATABASES))
async def test_a_database_s_durations_come_back_exactly(tmp_path: Path, kind: str,
                                                        request: pytest.FixtureRequest) -> None:
    sql, expected = DATABASES[kind]
    config, password = datasource(kind, request)
    async with proxy(tmp_path / "state") as appliance:
        dev = as_role(appliance, "developer")
        ds = await create_datasource(dev, name=kind, kind=kind, config={
            "host": "127.0.0.1", "tls": "disable", **config}, secrets={"password": password})
        resp = await run(dev, (await create_query(dev, ds["id"], sql, name="durations"))["id"])
    assert resp.status == 200, resp.body
    assert resp.body["rows"][0] == expected


@pytest.mark.parametrize(("months", "micros", "text"), [
    (0, 0, "PT0S"), (1, 0, "P1M"), (-14, 86_400_500_000, "P-14MT86400.5S"),
    (3, -1, "P3MT-0.000001S"), (2_136_000_000, 0, "P2136000000M")])
def test_months_stay_months(months: int, micros: int, text: str) -> None:
    assert iso_seconds(micros, months=months) == text
