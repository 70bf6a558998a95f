"""The result rows' JSON encoder (CPython's private `c_make_encoder`, quarantined in
`appliance.compact_json`) still exists and writes what `json` writes; audit timestamps."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import compact_json
from appliance.audit import log as audit_log


def test_the_private_encoder_is_still_there() -> None:
    """Fails loudly when CPython drops or changes `json.encoder.c_make_encoder` (the encoder
    would silently fall back to `json.JSONEncoder.encode`, about twice as slow)."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]  # CPython's private encoder, the subject of this test
    assert make is not None, "CPython's json has no C encoder: see appliance/compact_json.py"
    one_shot = make(None, str, json.encoder.encode_basestring, None, ":", ",", False, False,
                    True)
    assert "".join(one_shot({"a": [1, 2.5, None, "é"]}, 0)) == '{"a":[1,2.5,null,"é"]}'


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_the_encoder_writes_what_json_writes(value: object, sort_keys: bool) -> None:
    reference = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                 check_circular=False, sort_keys=sort_keys)
    assert compact_json.encoder(sort_keys=sort_keys)(value) == reference.encode(value)


def test_options_are_kept() -> None:
    strict = compact_json.encoder(allow_nan=False)
    with pytest.raises(ValueError):
        strict([float("nan")])
    assert compact_json.encoder()([float("inf")]) == "[Infinity]"
    with_default = compact_json.encoder(default=lambda value: f"<{type(value).__name__}>")
    assert with_default({"a": 1, "b": object()}) == '{"a":1,"b":"<object>"}'


def test_audit_times_are_iso_8601_utc_to_the_microsecond() -> None:
    before = dt.datetime.now(dt.UTC)
    stamps = [audit_log._now() for _ in range(3)]
    time.sleep(1.01)  # the cached second moves on
    stamps.append(audit_log._now())
    after = dt.datetime.now(dt.UTC)
    parsed = [dt.datetime.fromisoformat(stamp) for stamp in stamps]
    assert all(len(stamp) == len("2026-01-31T12:00:00.123456+00:00") for stamp in stamps)
    assert all(p.utcoffset() == dt.timedelta(0) for p in parsed)
    assert before - dt.timedelta(milliseconds=1) <= parsed[0] <= parsed[-1] <= after
    assert parsed == sorted(parsed) and (parsed[-1] - parsed[0]).total_seconds() >= 1
