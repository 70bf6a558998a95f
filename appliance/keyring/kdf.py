"""Key derivation: scrypt parameters (stored beside the store), their tuning, and derivation.

Owns the cost policy: tuned so one derivation takes 0.1-0.5 s. Callers that pass no
`KdfTuning` get `default_tuning()`, which is DEFAULT_TUNING; tests lower the cost by passing an
explicit one, or, for a CLI verb run in the test process, by swapping that one function
(tests/support/costs.py, as `passwords.default_hasher` is swapped). DEFAULT_TUNING itself is
never weakened (tests/test_keyring.py checks it). Never logs key material.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SALT_BYTES = 16
MAX_LOG2_N = 20
MAX_R = 32
MAX_P = 64


class KdfParamsError(ValueError):
    """Stored parameters are malformed or outside the bounds this appliance accepts."""


@dataclass(frozen=True)
class ScryptParams:
    n: int
    r: int
    p: int
    salt: bytes

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > 2**MAX_LOG2_N:
            raise KdfParamsError(f"scrypt n must be a power of two up to 2^{MAX_LOG2_N}")
        if not (1 <= self.r <= MAX_R) or not (1 <= self.p <= MAX_P):
            raise KdfParamsError("scrypt r or p out of range")
        if len(self.salt) < 16:
            raise KdfParamsError("scrypt salt shorter than 16 bytes")

    def to_json(self) -> str:
        return json.dumps({"alg": "scrypt", "n": self.n, "r": self.r, "p": self.p,
                           "salt": base64.b64encode(self.salt).decode()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScryptParams:
        try:
            data = json.loads(text)
            if data.get("alg") != "scrypt":
                raise KdfParamsError(f"unknown KDF {data.get('alg')!r}")
            return cls(n=int(data["n"]), r=int(data["r"]), p=int(data["p"]),
                       salt=base64.b64decode(data["salt"], validate=True))
        except KdfParamsError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KdfParamsError(f"malformed KDF parameters ({type(exc).__name__})") from None

    def describe(self) -> str:
        return f"scrypt n=2^{int(math.log2(self.n))} r={self.r} p={self.p}"

    def derive(self, material: bytes) -> DerivedKey:
        raw = Scrypt(salt=self.salt, length=32, n=self.n, r=self.r, p=self.p).derive(material)
        return DerivedKey(_expand(raw, b"wrap"), _expand(raw, b"verify"))


@dataclass(frozen=True)
class DerivedKey:
    """Two independent keys from one derivation: one wraps, one proves identity (verifier)."""

    wrap_key: bytes
    verify_key: bytes

    def __repr__(self) -> str:
        return "<DerivedKey>"


def _expand(raw: bytes, info: bytes) -> bytes:
    return HKDFExpand(hashes.SHA256(), 32, b"appliance/kdf/v1/" + info).derive(raw)


@dataclass(frozen=True)
class KdfTuning:
    """How new scrypt parameters are chosen. `fixed` skips measuring (tests, benchmarks)."""

    log2_n: int = 15          # 32 MiB of memory with r = 8
    r: int = 8
    target_seconds: float = 0.2
    min_seconds: float = 0.1
    max_seconds: float = 0.5
    fixed_p: int | None = None

    @classmethod
    def fixed(cls, log2_n: int, r: int = 8, p: int = 1) -> KdfTuning:
        return cls(log2_n=log2_n, r=r, fixed_p=p, min_seconds=0.0)

    def new_params(self) -> ScryptParams:
        """Fresh salt; p chosen so one derivation takes about `target_seconds`."""
        salt = os.urandom(SALT_BYTES)
        n = 2**self.log2_n
        if self.fixed_p is not None:
            return ScryptParams(n, self.r, self.fixed_p, salt)
        started = time.perf_counter()
        Scrypt(salt=salt, length=32, n=n, r=self.r, p=1).derive(b"appliance/kdf-tuning")
        one = max(time.perf_counter() - started, 1e-6)
        while one > self.max_seconds and n > 2**14:  # a slow machine: less memory-hard, not less
            n //= 2
            one /= 2
        p = max(1, min(MAX_P, round(self.target_seconds / one)))
        while p > 1 and one * p > self.max_seconds:
            p -= 1
        return ScryptParams(n, self.r, p, salt)


DEFAULT_TUNING = KdfTuning()


def default_tuning() -> KdfTuning:
    """The tuning of new parameters when a caller passes none, asked at the time of use."""
    return DEFAULT_TUNING
