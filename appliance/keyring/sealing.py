"""The sealed formats: a secret field bound to its record (and, for a datasource's secret, to the
destination it was entered for), and key material wrapped under a key.

Owns byte layouts, nonces and associated data (AES-256-GCM from `cryptography`). Never logs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_V1 = 0x01  # a field bound to its record only; still opened, never written
FORMAT_V2 = 0x02  # a field bound to its record and to a binding (empty for most kinds)
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_FIELD_HEADER = struct.Struct(">BI")  # format version, data key version
FIELD_OVERHEAD = _FIELD_HEADER.size + NONCE_BYTES + TAG_BYTES
_WRAP_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES


class FormatError(Exception):
    """A sealed blob is malformed or does not authenticate; `reason` says how (no data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _frame(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def field_aad(kind: str, record_id: str, field: str, key_version: int,
              binding: bytes | None = None) -> bytes:
    """Associated data binding a sealed field to its record kind, record id, field and key, and
    (format 2) to `binding`: what else the field may be opened for, e.g. a destination."""
    if binding is None:
        return _frame(b"appliance/sealed-field/v1", kind.encode(), record_id.encode(),
                      field.encode(), key_version.to_bytes(4, "big"))
    return _frame(b"appliance/sealed-field/v2", kind.encode(), record_id.encode(),
                  field.encode(), key_version.to_bytes(4, "big"), binding)


def seal_field(key: bytes, key_version: int, kind: str, record_id: str, field: str,
               plaintext: bytes, binding: bytes = b"") -> bytes:
    """`version byte | key version (4) | nonce (12) | ciphertext | tag (16)`, format 2: it opens
    only with the same `binding`."""
    header = _FIELD_HEADER.pack(FORMAT_V2, key_version)
    nonce = os.urandom(NONCE_BYTES)
    aad = header + field_aad(kind, record_id, field, key_version, binding)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def field_format(blob: bytes) -> tuple[int, int]:
    """(format version, data key version) of a sealed field; `FormatError` if unusable."""
    if len(blob) < FIELD_OVERHEAD:
        raise FormatError(f"truncated ({len(blob)} bytes, at least {FIELD_OVERHEAD} expected)")
    version, key_version = _FIELD_HEADER.unpack_from(blob)
    if version not in (FORMAT_V1, FORMAT_V2):
        raise FormatError(f"unknown format version {version}")
    return int(version), int(key_version)


def field_key_version(blob: bytes) -> int:
    """The data key version a sealed field names; `FormatError` if the header is unusable."""
    return field_format(blob)[1]


def open_field(key: bytes, kind: str, record_id: str, field: str, blob: bytes,
               binding: bytes = b"") -> bytes:
    """The plaintext of a sealed field, which opens only with the `binding` it was sealed with.
    A format-1 field has no binding: it opens only when `binding` is empty."""
    version, key_version = field_format(blob)
    if version == FORMAT_V1 and binding:
        raise FormatError("sealed before destinations were bound (format 1): it cannot be "
                          "opened for a destination")
    header = blob[: _FIELD_HEADER.size]
    nonce = blob[_FIELD_HEADER.size : _FIELD_HEADER.size + NONCE_BYTES]
    aad = header + field_aad(kind, record_id, field, key_version,
                             None if version == FORMAT_V1 else binding)
    try:
        return AESGCM(key).decrypt(nonce, blob[_FIELD_HEADER.size + NONCE_BYTES :], aad)
    except InvalidTag:
        raise FormatError(
            "authentication failed (tampered, corrupted, or copied from another record or field)"
        ) from None


def wrap(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Key material sealed under `key`: `version byte | nonce | ciphertext | tag`."""
    nonce = os.urandom(NONCE_BYTES)
    header = bytes([FORMAT_V1])
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + aad)


def unwrap(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < _WRAP_OVERHEAD:
        raise FormatError(f"truncated ({len(blob)} bytes)")
    if blob[0] != FORMAT_V1:
        raise FormatError(f"unknown format version {blob[0]}")
    try:
        return AESGCM(key).decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :],
                                   bytes([FORMAT_V1]) + aad)
    except InvalidTag:
        raise FormatError("authentication failed") from None


def check_value(key: bytes, label: bytes) -> bytes:
    """A verifier: proves which key is in hand without revealing it or sealing anything."""
    return hmac.new(key, b"appliance/verifier/v1/" + label, hashlib.sha256).digest()


def same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
