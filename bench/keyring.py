"""Keyring benchmark: sealed-field seals and opens per second against bare AES-256-GCM measured in
the same run, and the root key derivation time at the default tuning. Prints; never asserts.

Run: .venv/bin/python bench/keyring.py [--seconds 1.0] [--size 32]
"""

from __future__ import annotations

import argparse
import os
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.keyring.kdf import DEFAULT_TUNING
from appliance.keyring.sealing import open_field, seal_field


def rate(fn, seconds: float) -> float:
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn()
        count += 100
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=32, help="plaintext bytes")
    args = parser.parse_args()
    key = os.urandom(32)
    value = os.urandom(args.size)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    raw_blob = aead.encrypt(nonce, value, b"")
    blob = seal_field(key, 1, "datasource", "0190a1b2-c3d4", "password", value)

    base_seal = rate(lambda: AESGCM(key).encrypt(os.urandom(12), value, b""), args.seconds)
    base_open = rate(lambda: AESGCM(key).decrypt(nonce, raw_blob, b""), args.seconds)
    seals = rate(lambda: seal_field(key, 1, "datasource", "0190a1b2-c3d4", "password", value),
                 args.seconds)
    opens = rate(lambda: open_field(key, "datasource", "0190a1b2-c3d4", "password", blob),
                 args.seconds)
    print(f"plaintext {args.size} bytes")
    for name, ours, base in (("seal", seals, base_seal), ("open", opens, base_open)):
        print(f"{name}: {ours:12,.0f}/s   bare AES-GCM {base:12,.0f}/s   ratio {ours / base:.2f}")

    started = time.perf_counter()
    params = DEFAULT_TUNING.new_params()
    tuning = time.perf_counter() - started
    times = []
    for _ in range(3):
        started = time.perf_counter()
        params.derive(os.urandom(32))
        times.append(time.perf_counter() - started)
    print(f"derivation ({params.describe()}): best {min(times):.3f} s, worst {max(times):.3f} s "
          f"(target 0.1-0.5 s; tuning took {tuning:.3f} s; done once per start)")


if __name__ == "__main__":
    main()
