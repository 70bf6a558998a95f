"""Throwaway certificates for the tests' own servers (no tests here): a test CA with a leaf for
localhost and 127.0.0.1 (MariaDB, the ACME front), a self-signed certificate nobody trusts
(servers a client must refuse, or reach with TLS unverified), a CA that signs leaves on demand
(the operator's files for `tls.mode = "files"`), and certificates' SHA-256 fingerprints.

Owns the certificates, their keys (P-256) and their PEM files. Never used for the appliance's own
certificate except as an operator's files in "files" mode (appliance/tls makes it otherwise), and
never trusted by anything but the test that made it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_KEY_USAGE = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                             content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, encipher_only=False,
                             decipher_only=False)


@dataclass
class TestCA:
    """The test CA's certificate, and the server's certificate (localhost, 127.0.0.1) and key."""

    __test__ = False  # not a test class, whatever pytest makes of its name

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def key_pem(key: ec.EllipticCurvePrivateKey,
            form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def make_test_ca(where: Path, cn: str) -> TestCA:
    """A CA named `cn` and a leaf it signed for localhost and 127.0.0.1, valid from an hour ago
    for 30 days, written to `where`/ca.pem, cert.pem and key.pem."""
    where.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def certificate(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
                    signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                                  critical=True))
        if ca:
            builder = builder.add_extension(CA_KEY_USAGE, critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    out = TestCA(where / "ca.pem", where / "cert.pem", where / "key.pem")
    out.ca_pem.write_bytes(certificate(ca_name, ca_name, ca_key.public_key(), ca_key, True)
                           .public_bytes(serialization.Encoding.PEM))
    out.cert_pem.write_bytes(certificate(leaf_name, ca_name, key.public_key(), ca_key, False)
                             .public_bytes(serialization.Encoding.PEM))
    out.key_pem.write_bytes(key_pem(key))
    return out


def self_signed(cert_path: Path, key_path: Path, cn: str,
                form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> None:
    """A self-signed certificate for `cn` (valid from five minutes ago for a day) and its key
    (0600, in `form`), written to those paths: a server nobody trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key_pem(key, form))
    key_path.chmod(0o600)


class SigningCA:
    """A CA held in memory (valid from a day ago for 30 days) that signs a leaf for localhost
    and 127.0.0.1 under any common name, as often as a test asks."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "files-mode test CA")])
        now = dt.datetime.now(dt.UTC)
        self.name = name
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, cn: str, days: int = 30) -> tuple[bytes, bytes]:
        """A new leaf's certificate and key (PKCS#8), both PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def peer_fingerprint(sock: ssl.SSLSocket) -> str:
    """The SHA-256 (hex) of the certificate the peer presented on `sock`."""
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def fingerprint(pem: bytes) -> str:
    """The SHA-256 (hex) of a PEM certificate's DER form."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
