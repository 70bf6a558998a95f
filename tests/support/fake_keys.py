"""Fake credentials in the real formats (prefixes, alphabets, lengths, checksums where a format
has one), made from a seeded generator: never a real credential.

Owns the corpus the secret-scanning tests paste into queries. Never reads a real key anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
import string
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ALNUM = string.ascii_letters + string.digits
_B64 = string.ascii_letters + string.digits + "+/"
_URLSAFE = string.ascii_letters + string.digits + "_-"


@dataclass(frozen=True)
class Fake:
    rule: str  # the rule that must name it
    text: str  # what is pasted
    secret: str  # the part that must never be echoed


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _base62(number: int, width: int) -> str:
    out = ""
    while number:
        number, rest = divmod(number, 62)
        out = _BASE62[rest] + out
    return out.rjust(width, "0")


def github_token(rng: random.Random, prefix: str = "ghp_") -> str:
    """30 random base62 characters, then the CRC32 of them as 6 base62 characters."""
    body = _pick(rng, _ALNUM, 30)
    return prefix + body + _base62(binascii.crc32(body.encode()), 6)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"sub": str(rng.randrange(10**9)), "iat": 1700000000}).encode())
    signature = _b64url(hmac.new(rng.randbytes(32), f"{header}.{payload}".encode(),
                                 hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def corpus(seed: int = 26) -> list[Fake]:
    """One fake of every format the scanner knows, and several shapes of the context ones."""
    rng = random.Random(seed)
    out: list[Fake] = []

    def add(rule: str, text: str, secret: str | None = None) -> None:
        out.append(Fake(rule, text, secret if secret is not None else text))

    base32 = string.ascii_uppercase + "234567"
    add("aws_access_key_id", "AKIA" + _pick(rng, base32, 16))
    add("aws_access_key_id", "ASIA" + _pick(rng, base32, 16))
    aws_secret = _pick(rng, _B64, 40)
    add("aws_secret_access_key", f"aws_secret_access_key={aws_secret}", aws_secret)
    gcp = rsa_pem()
    # A GCP service account's key file, pasted as JSON text: the key's newlines are escaped.
    add("private_key", json.dumps({"type": "service_account", "private_key": gcp}),
        json.dumps(gcp)[1:-1])
    add("private_key", gcp)
    add("private_key", ec_pem())
    add("gcp_api_key", "AIza" + _pick(rng, _URLSAFE, 35))
    azure = base64.b64encode(rng.randbytes(64)).decode()
    add("azure_storage_key", f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={azure};"
                             "EndpointSuffix=core.windows.net", azure)
    sig = base64.b64encode(rng.randbytes(32)).decode().replace("+", "%2B").replace("/", "%2F") \
        .replace("=", "%3D")
    add("azure_sas_signature", f"sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01&sig={sig}", sig)
    add("github_token", github_token(rng))
    add("github_token", github_token(rng, "ghs_"))
    add("github_token", "github_pat_" + _pick(rng, _ALNUM, 22) + "_" + _pick(rng, _ALNUM, 59))
    add("gitlab_token", "glpat-" + _pick(rng, _URLSAFE, 20))
    add("slack_token", f"xoxb-{rng.randrange(10**11, 10**12)}-{rng.randrange(10**12, 10**13)}-"
                       + _pick(rng, _ALNUM, 24))
    hook = f"T{_pick(rng, string.ascii_uppercase + string.digits, 8)}/B" \
           f"{_pick(rng, string.ascii_uppercase + string.digits, 10)}/{_pick(rng, _ALNUM, 24)}"
    add("slack_webhook", f"https://hooks.slack.com/services/{hook}", hook)
    add("stripe_key", "sk_live_" + _pick(rng, _ALNUM, 24))
    add("stripe_key", "rk_test_" + _pick(rng, _ALNUM, 99))
    add("twilio_api_key", "SK" + _pick(rng, "0123456789abcdef", 32))
    add("sendgrid_api_key", "SG." + _pick(rng, _URLSAFE, 22) + "." + _pick(rng, _URLSAFE, 43))
    add("openai_api_key", "sk-" + _pick(rng, _ALNUM, 20) + "T3BlbkFJ" + _pick(rng, _ALNUM, 20))
    add("openai_api_key", "sk-proj-" + _pick(rng, _URLSAFE, 74) + "T3BlbkFJ"
        + _pick(rng, _URLSAFE, 74))
    add("anthropic_api_key", "sk-ant-api03-" + _pick(rng, _URLSAFE, 93) + "AA")
    add("jwt", jwt(rng))
    password = _pick(rng, _ALNUM, 14)
    add("url_password", f"postgresql://report:{password}@db.example.com:5432/sales", password)
    add("url_password", f"https://svc:{password}@api.example.com/v1", password)
    add("connection_password", f"host=db.example.com user=report password={password}", password)
    add("connection_password", f"Server=db;Database=x;User Id=sa;Password={password};", password)
    return out
