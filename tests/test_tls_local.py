"""The local CA: created once, never replaced; leaves re-issued when due or for other names."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from appliance.errors import TLSError
from appliance.tls import local_ca


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def test_ca_is_created_once(state: Path) -> None:
    first = local_ca.ensure_ca(state)
    second = local_ca.ensure_ca(state)
    assert first.fingerprint == second.fingerprint
    assert (first.key_path.stat().st_mode & 0o777) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_half_a_ca_is_refused_not_replaced(state: Path) -> None:
    ca = local_ca.ensure_ca(state)
    ca.key_path.unlink()
    with pytest.raises(TLSError, match="half a local CA"):
        local_ca.ensure_ca(state)
    assert ca.cert_path.exists()


def test_leaf_is_reused_until_due_then_reissued(state: Path) -> None:
    names = ("localhost", "127.0.0.1", "::1")
    leaf = local_ca.ensure_leaf(state, names)
    assert set(leaf.info.names) == set(names)
    assert local_ca.ensure_leaf(state, names).info.fingerprint_sha256 == leaf.info.fingerprint_sha256

    just_before = leaf.info.renewal_due_at() - dt.timedelta(minutes=1)
    assert local_ca.ensure_leaf(state, names, now=just_before).info.fingerprint_sha256 == \
        leaf.info.fingerprint_sha256
    due = leaf.info.renewal_due_at() + dt.timedelta(minutes=1)
    renewed = local_ca.ensure_leaf(state, names, now=due)
    assert renewed.info.fingerprint_sha256 != leaf.info.fingerprint_sha256
    assert renewed.info.not_after > leaf.info.not_after


def test_leaf_is_reissued_for_new_names_and_for_a_mismatched_key(state: Path) -> None:
    leaf = local_ca.ensure_leaf(state, ("localhost",))
    wider = local_ca.ensure_leaf(state, ("localhost", "appliance.test"))
    assert wider.info.fingerprint_sha256 != leaf.info.fingerprint_sha256
    assert "appliance.test" in wider.info.names

    # A crash between writing the key and the certificate leaves a mismatched pair: replaced.
    other = local_ca.ensure_leaf(state, ("other.test",))
    before = other.info.fingerprint_sha256
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    stray = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    other.key_path.write_bytes(stray)
    fixed = local_ca.ensure_leaf(state, ("other.test",))
    assert fixed.info.fingerprint_sha256 != before


def test_leaf_chains_to_the_ca(state: Path) -> None:
    ca = local_ca.ensure_ca(state)
    leaf = local_ca.ensure_leaf(state, ("localhost",))
    chain = x509.load_pem_x509_certificates(leaf.cert_path.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    chain[0].verify_directly_issued_by(ca_cert)
