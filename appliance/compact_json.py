"""Compact JSON encoders for the request path, built once.

`json.JSONEncoder.encode` builds a new C encoder object (and a closure) on every call, about a
microsecond each time; a run encodes its columns, every row and its audit entry. `encoder(...)`
returns a function with the output of `json.JSONEncoder(ensure_ascii=False, separators=(",",
":"), check_circular=False, ...)` whose C encoder is made once. Without a circular check, a value
must not contain itself (rows and audit entries never do).
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
    if make is None:  # no C accelerator in this Python: the encoder as it is
        return reference.encode
    one_shot = make(None, reference.default, json.encoder.encode_basestring, None,
                    reference.key_separator, reference.item_separator, sort_keys, False, allow_nan)

    def encode(value: Any) -> str:
        return "".join(one_shot(value, 0))

    return encode


__all__ = ["Encode", "encoder"]
