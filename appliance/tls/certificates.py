"""What a certificate is to the appliance: its names, issuer, lifetime, and when it needs renewal.

Owns parsing and checking PEM material. Never logs or returns private key bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appliance.errors import TLSError

# Renew when this fraction of the lifetime remains (certmagic's default ratio is 1/3).
RENEW_REMAINING_RATIO = 1 / 3


@dataclass(frozen=True)
class CertificateInfo:
    names: tuple[str, ...]
    issuer: str
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before

    def renewal_due_at(self) -> dt.datetime:
        return self.not_after - self.lifetime * RENEW_REMAINING_RATIO

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def covers(self, names: tuple[str, ...]) -> bool:
        return set(names) <= set(self.names)


def fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def describe(cert: x509.Certificate) -> CertificateInfo:
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return CertificateInfo(
        names=tuple(names),
        issuer=_common_name(cert.issuer),
        subject=_common_name(cert.subject),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=fingerprint(cert),
    )


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def load_pair(chain_pem: bytes, key_pem: bytes, *, origin: str) -> CertificateInfo:
    """Check that a chain and key go together and the leaf is valid now; describe the leaf."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TLSError(f"{origin}: no valid PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSError(f"{origin}: the private key is not an unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSError(f"{origin}: only ECDSA and RSA keys are supported")
    leaf = chain[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TLSError(f"{origin}: the private key does not match the certificate")
    info = describe(leaf)
    now = dt.datetime.now(dt.UTC)
    if info.not_after <= now:
        raise TLSError(f"{origin}: the certificate expired on {info.not_after:%Y-%m-%d %H:%M} UTC")
    if info.not_before > now + dt.timedelta(minutes=5):
        raise TLSError(f"{origin}: the certificate is not valid before {info.not_before:%Y-%m-%d}")
    return info


def san_entries(names: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def temporary_self_signed(names: tuple[str, ...], lifetime: dt.timedelta = dt.timedelta(days=2)
                          ) -> tuple[bytes, bytes]:
    """A throwaway self-signed ECDSA P-256 certificate (chain PEM, key PEM), kept in memory only,
    served while the first ACME certificate is being obtained."""
    from cryptography.hazmat.primitives import hashes

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Appliance (temporary)"),
        x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
