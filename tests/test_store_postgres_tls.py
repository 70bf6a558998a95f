"""The PostgreSQL store over TLS (`[store] tls`), against a real cluster with ssl = on and a
certificate from a test CA: `verify-full` with `ca_file` works; a wrong host name in the URL, or
a CA that did not sign the server's certificate, is one clear line and exit 2 from `serve`;
`require` accepts a certificate no configured CA signed but still encrypts (the cluster accepts nothing but
TLS, and pg_stat_ssl says every store connection is encrypted)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import (
    PG_PASSWORD,
    PostgresServer,
    StoreDatabase,
    clean_env,
    new_store_database,
    pg_binary,
    postgres_cluster,
    run_cli,
    start_server,
)

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Authority:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    pem: Path


def make_ca(where: Path, cn: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    pem = where / f"{cn.replace(' ', '-')}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(name, key, pem)


def server_certificate(ca: Authority, where: Path) -> tuple[Path, Path]:
    """A server certificate for the address 127.0.0.1 only (no DNS name: `localhost` in a URL
    is a wrong host name for it), and its key, readable by the cluster's user."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = where / "server.pem", where / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    if os.geteuid() == 0:  # the cluster runs as postgres and must read its key
        owner = pwd.getpwnam("postgres")
        for path in (cert_path, key_path):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return cert_path, key_path


@dataclass
class TLSCluster:
    server: PostgresServer
    ca: Authority  # signed the server's certificate
    other_ca: Authority  # did not


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TLSCluster]:
    psql = pg_binary("psql")
    if not psql:
        pytest.skip("PostgreSQL client (psql) is not installed")
    with tempfile.TemporaryDirectory(prefix="store-tls-") as directory:
        root = Path(directory)
        root.chmod(0o755)
        ca, other = make_ca(root, "store test CA"), make_ca(root, "another test CA")
        cert, key = server_certificate(ca, root)
        with postgres_cluster(
            name="store-tls",
            # TCP only over TLS: a plain connection is refused by the server itself.
            hba="local all postgres trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            conf=f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
                 "password_encryption = 'scram-sha-256'\n",
        ) as cluster:
            server = PostgresServer(cluster.root, cluster.port, cluster.prefix, psql)
            server.sql(f"CREATE ROLE app LOGIN PASSWORD '{PG_PASSWORD}'", database="postgres")
            yield TLSCluster(server, ca, other)


@pytest.fixture
def database(tls_cluster: TLSCluster, tmp_path: Path) -> Iterator[StoreDatabase]:
    found = new_store_database(tls_cluster.server, tmp_path)
    try:
        yield found
    finally:
        tls_cluster.server.sql(f"DROP DATABASE IF EXISTS {found.name} WITH (FORCE)",
                               database="postgres")


def store_env(database: StoreDatabase, tls: str, ca_file: Path | None,
              host: str = "127.0.0.1") -> dict[str, str]:
    env = {**database.env(), "APPLIANCE_STORE_TLS": tls,
           "APPLIANCE_STORE_URL": database.url.replace("@127.0.0.1:", f"@{host}:")}
    if ca_file is not None:
        env["APPLIANCE_STORE_CA_FILE"] = str(ca_file)
    return clean_env(**env)


def serve_fails(tmp_path: Path, env: dict[str, str]) -> str:
    """`serve` on that store: exit 2 and the one line that says why."""
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--state-dir", str(tmp_path / "state"), "--listen",
         "127.0.0.1:0"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and PG_PASSWORD not in done.stdout + done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def pg_ssl_of_store_connections(database: StoreDatabase) -> list[str]:
    """`t`/`f` per live store connection to `database`: whether pg_stat_ssl says it is TLS."""
    return database.server.sql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE "
        f"a.datname = '{database.name}' AND a.application_name = 'appliance-store'",
        database="postgres").split()


def test_verify_full_with_the_ca_file_serves(tmp_path: Path, tls_cluster: TLSCluster,
                                             database: StoreDatabase) -> None:
    env = store_env(database, "verify-full", tls_cluster.ca.pem)
    init = run_cli("init", "--state-dir", str(tmp_path / "state"), env=env)
    assert init.returncode == 0, init.stderr
    server = start_server(["serve", "--state-dir", str(tmp_path / "state"), "--listen",
                           "127.0.0.1:0"], cwd=tmp_path, env=env)
    try:
        ssl_flags = pg_ssl_of_store_connections(database)
        assert ssl_flags and set(ssl_flags) == {"t"}, ssl_flags
    finally:
        assert server.stop() == 0, server.stderr()
    assert PG_PASSWORD not in server.stderr() + "".join(server.stdout_lines)
    assert database.sql("SELECT count(*) FROM users") == "1\n"


def test_a_wrong_host_name_or_another_ca_is_one_line_and_exit_2(
        tmp_path: Path, tls_cluster: TLSCluster, database: StoreDatabase) -> None:
    good = store_env(database, "verify-full", tls_cluster.ca.pem)
    assert run_cli("init", "--state-dir", str(tmp_path / "state"), env=good).returncode == 0
    # `localhost` reaches the same server, whose certificate names only 127.0.0.1.
    line = serve_fails(tmp_path, store_env(database, "verify-full", tls_cluster.ca.pem,
                                           host="localhost"))
    assert "TLS certificate is not trusted" in line and "localhost" in line, line
    # The server's certificate is not signed by the CA in ca_file.
    line = serve_fails(tmp_path, store_env(database, "verify-full", tls_cluster.other_ca.pem))
    assert "TLS certificate is not trusted" in line and "store.ca_file" in line, line
    # And without ca_file: the system's CAs do not know the test CA either.
    line = serve_fails(tmp_path, store_env(database, "verify-full", None))
    assert "TLS certificate is not trusted" in line, line


async def test_require_accepts_another_ca_but_still_encrypts(
        tmp_path: Path, tls_cluster: TLSCluster, database: StoreDatabase) -> None:
    from appliance import settings
    from appliance.egress import Dialer, PolicyHolder
    from appliance.store import open_store

    # No CA at all (ca_file is for verify-full only): a certificate from any CA is accepted.
    env = store_env(database, "require", None)
    s = settings.load(env=env, flags={"state_dir": str(tmp_path / "state")})
    (tmp_path / "state").mkdir(mode=0o700)
    store = await open_store(s, Dialer(PolicyHolder(s.egress)))
    try:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        assert await store.fetch_one("SELECT value FROM meta WHERE key = 'k'") == {"value": "v"}
        ssl_flags = pg_ssl_of_store_connections(database)
        assert ssl_flags and set(ssl_flags) == {"t"}, ssl_flags
    finally:
        await store.close()
    # The cluster takes TLS only (hostssl): a store that would not encrypt cannot connect.
    plain = run_cli("init", "--state-dir", str(tmp_path / "plain"),
                    env=store_env(database, "disable", None))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
