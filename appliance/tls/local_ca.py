"""The local CA for testers and laptops: an ECDSA P-256 CA created once, and leaves it signs.

Owns `tls/ca.pem`, `tls/ca.key`, `tls/local.pem` and `tls/local.key` in the state dir (keys 0600).
Never re-creates an existing CA: that would break every browser that already trusts it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import state_dir
from appliance.errors import TLSError
from appliance.tls.certificates import (
    CertificateInfo,
    describe,
    fingerprint,
    load_pair,
    san_entries,
)

CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=90)
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class LocalCA:
    cert_path: Path
    key_path: Path
    fingerprint: str


@dataclass(frozen=True)
class LeafFiles:
    cert_path: Path
    key_path: Path
    info: CertificateInfo


def _paths(state: Path) -> dict[str, Path]:
    tls_dir = state / state_dir.TLS_DIR
    return {
        "ca_cert": tls_dir / "ca.pem",
        "ca_key": tls_dir / "ca.key",
        "leaf_cert": tls_dir / "local.pem",
        "leaf_key": tls_dir / "local.key",
    }


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca(state: Path) -> LocalCA:
    """Load the local CA, creating it the first time."""
    paths = _paths(state)
    state_dir.ensure_subdir(state, state_dir.TLS_DIR)
    if paths["ca_cert"].exists() and paths["ca_key"].exists():
        cert, _ = _load_ca(paths)
        return LocalCA(paths["ca_cert"], paths["ca_key"], fingerprint(cert))
    if paths["ca_cert"].exists() or paths["ca_key"].exists():
        raise TLSError(
            f"half a local CA in {paths['ca_cert'].parent}: one of ca.pem and ca.key is missing; "
            "remove both to create a new CA (browsers that trusted the old one must trust the new)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Appliance local CA"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Appliance local CA {secrets.token_hex(4)}"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    state_dir.write_private(paths["ca_key"], _key_pem(key), exclusive=True)
    state_dir.write_private(paths["ca_cert"], cert.public_bytes(serialization.Encoding.PEM))
    return LocalCA(paths["ca_cert"], paths["ca_key"], fingerprint(cert))


def _load_ca(paths: dict[str, Path]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
        key = serialization.load_pem_private_key(paths["ca_key"].read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TLSError(f"cannot read the local CA in {paths['ca_cert'].parent}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSError(f"{paths['ca_key']} is not an ECDSA key")
    return cert, key


def ensure_leaf(
    state: Path, names: tuple[str, ...], *, now: dt.datetime | None = None
) -> LeafFiles:
    """Return the current leaf, issuing a new one if it is missing, due, or for other names."""
    paths = _paths(state)
    ensure_ca(state)
    ca_cert, ca_key = _load_ca(paths)
    now = now or dt.datetime.now(dt.UTC)
    if paths["leaf_cert"].exists() and paths["leaf_key"].exists():
        try:
            chain_pem = paths["leaf_cert"].read_bytes()
            chain = x509.load_pem_x509_certificates(chain_pem)
            info = load_pair(chain_pem, paths["leaf_key"].read_bytes(), origin="local leaf")
            signed_by_ca = _issued_by(chain[0], ca_cert, ca_key)
            if signed_by_ca and info.covers(names) and now < info.renewal_due_at():
                return LeafFiles(paths["leaf_cert"], paths["leaf_key"], info)
        except (ValueError, TLSError):
            pass  # unreadable, mismatched or expired: issue a new one
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + LEAF_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    # Key first, then the certificate: a crash in between leaves a mismatched pair that the
    # next check replaces, never a certificate without its key.
    state_dir.write_private(paths["leaf_key"], _key_pem(key))
    state_dir.write_private(paths["leaf_cert"], chain_pem)
    return LeafFiles(paths["leaf_cert"], paths["leaf_key"], describe(cert))


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate,
               ca_key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether `cert` names this CA as its issuer: its issuer name and its authority key
    identifier (a hash of the CA's public key). A leaf from an earlier CA (its key replaced) fails.

    Names and key identifiers, not the signature: a signature check would load cryptography's
    OpenSSL bindings into every server for this one call (0.4 MB of idle memory), and it adds
    nothing here. Both files live in the state directory beside the CA key, and a leaf that was
    not signed by this CA is refused by every client that trusts the CA, whatever it names.
    """
    try:
        authority = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    own = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()).digest
    return cert.issuer == ca_cert.subject and authority.key_identifier == own
