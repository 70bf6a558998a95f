"""Compact JSON encoders for result rows, built once: the one use of CPython's private
`json.encoder.c_make_encoder`, quarantined here.

Owns that private call and the test that fails loudly when CPython changes it
(tests/test_compact_json.py). Never used by the audit log (its one encoder is orjson, in
`audit/chain.py`).

`json.JSONEncoder.encode` builds a new C encoder object (and a closure) on every call; a run
encodes its columns and every row. `encoder(...)` returns a function with the output of
`json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, ...)` whose C
encoder is made once: measured (docs/performance.md, "The JSON encoders"), a 3-value row in
about 0.6 µs against 1.1 µs. orjson writes the same row in 0.1 µs but not the same bytes for
every value (a non-finite float becomes `null` where the result encoding writes "NaN", `1e-07`
is written `1e-7`, an int beyond 64 bits is refused), so the result rows stay here until their
encoding (`queries/result_json.py`) decides to take those differences. Without a circular check, a
value must not contain itself (rows never do).
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

Encode = Callable[[Any], str]


def encoder(*, sort_keys: bool = False, allow_nan: bool = True,
            default: Callable[[Any], Any] | None = None) -> Encode:
    """A compact encoder with these options (see the module docstring)."""
    reference = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False,
                                 sort_keys=sort_keys, allow_nan=allow_nan, default=default)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator in this Python (tests/test_compact_json.py fails)
        return reference.encode
    one_shot = make(None, reference.default, json.encoder.encode_basestring, None,
                    reference.key_separator, reference.item_separator, sort_keys, False, allow_nan)

    def encode(value: Any) -> str:
        return "".join(one_shot(value, 0))

    return encode


__all__ = ["Encode", "encoder"]
