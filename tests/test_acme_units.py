"""ACME parts that need no CA: the renewal policy data, Retry-After, the HTTP-01 responder on the
real plain-HTTP app, the `replaces` order message, ARI ids, the egress seam, `init --domain`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from pathlib import Path

import acme.client
import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance import settings as settings_module
from appliance.egress import Dialer, PolicyHolder
from appliance.http.redirect import build_redirect_app
from appliance.secret import Secret
from appliance.settings import EgressSettings
from appliance.tls import renewal
from appliance.tls.acme_client import ACMEClient, NewOrder, ari_cert_id, new_key_pem
from appliance.tls.certificates import CertificateInfo
from appliance.tls.errors import ACMEEgressDenied, ACMEUnreachable
from appliance.tls.http01 import HTTP01Responder
from appliance.tls.transport import EgressRoute, parse_retry_after
from tests.conftest import clean_env
from tests.support.cli import run_verb

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _info(not_before: dt.datetime, not_after: dt.datetime, fp: str = "A") -> CertificateInfo:
    return CertificateInfo(("a.test",), "CA", "a.test", not_before, not_after, fp)


def test_backoff_schedule_is_data() -> None:
    minutes = [renewal.backoff(n).total_seconds() / 60 for n in range(1, 14)]
    assert minutes == [1, 2, 5, 10, 30, 60, 120, 180, 240, 300, 360, 360, 360]
    assert renewal.backoff(0) == renewal.backoff(1)


def test_retry_after_wins_when_later() -> None:
    later = NOW + dt.timedelta(hours=3)
    assert renewal.next_attempt_after_failure(NOW, 1, later) == later
    sooner = NOW + dt.timedelta(seconds=5)
    assert renewal.next_attempt_after_failure(NOW, 1, sooner) == NOW + dt.timedelta(minutes=1)
    assert renewal.next_attempt_after_failure(NOW, 4, None) == NOW + dt.timedelta(minutes=10)


def test_renew_at_ari_or_one_third() -> None:
    info = _info(NOW, NOW + dt.timedelta(days=90))
    assert renewal.renew_at(info, None) == NOW + dt.timedelta(days=60)
    ari = NOW + dt.timedelta(days=70)
    assert renewal.renew_at(info, ari) == ari
    assert renewal.renew_at(info, NOW + dt.timedelta(days=200)) == info.not_after


def test_only_a_newer_certificate_replaces() -> None:
    current = _info(NOW, NOW + dt.timedelta(days=90), "A")
    assert renewal.is_newer(current, None)
    assert not renewal.is_newer(current, current)
    assert renewal.is_newer(_info(NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=91), "B"),
                            current)
    assert renewal.is_newer(_info(NOW, NOW + dt.timedelta(days=90), "B"), current)  # same second
    assert not renewal.is_newer(_info(NOW, NOW + dt.timedelta(days=89), "B"), current)
    assert not renewal.is_newer(_info(NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=95),
                                      "B"), current)


@pytest.mark.parametrize(("value", "expected"), [
    ("120", NOW + dt.timedelta(seconds=120)),
    ("Wed, 02 Jan 2030 00:00:00 GMT", dt.datetime(2030, 1, 2, tzinfo=dt.UTC)),
    ("soon", None),
    ("", None),
    ("99999999999", NOW + dt.timedelta(days=7)),  # capped
])
def test_parse_retry_after(value: str, expected: dt.datetime | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_new_order_carries_replaces_only_when_given() -> None:
    from acme import messages

    ident = messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.test")
    with_replaces = json.loads(NewOrder(identifiers=[ident], replaces="abc.def").json_dumps())
    assert with_replaces["replaces"] == "abc.def"
    plain = json.loads(NewOrder(identifiers=[ident], profile=None, replaces=None).json_dumps())
    assert "replaces" not in plain and "profile" not in plain


def test_ari_cert_id_matches_the_draft_example() -> None:
    # draft-ietf-acme-ari §4.1: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    # serial 00:87:65:43:21 -> aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x87654321)
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert ari_cert_id(pem) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def _cert_with(serial: int, aki: bytes) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0x87654321,
                                    2**63, 2**152 - 1, 2**159 - 1])
def test_ari_cert_id_agrees_with_acme(serial: int) -> None:
    # ari_cert_id is ours (RFC 9773); acme computes the same inside its client, privately. If acme
    # renames or drops it, only this cross-check is lost: the draft example above still holds.
    acme_ari_id = getattr(acme.client, "_renewal_info_path_component", None)
    if acme_ari_id is None:
        pytest.skip("acme no longer has _renewal_info_path_component to compare with")
    for aki in (bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"), bytes(range(1, 33))):
        cert = _cert_with(serial, aki)
        assert ari_cert_id(cert.public_bytes(serialization.Encoding.PEM)) == acme_ari_id(cert)


def test_keys_are_ecdsa_p256() -> None:
    key = serialization.load_pem_private_key(new_key_pem(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_responder_rejects_bad_tokens() -> None:
    responder = HTTP01Responder()
    for bad in ("", "a/b", "../etc", "a b", "x" * 300):
        with pytest.raises(ValueError):
            responder.add(bad, "ka")
    responder.add("tok_-1", "tok_-1.thumb")
    assert responder.get("tok_-1") == "tok_-1.thumb"
    responder.remove("tok_-1")
    assert len(responder) == 0


async def test_plain_http_listener_answers_challenges_and_redirects(tmp_path: Path) -> None:
    s = settings_module.load(env={"APPLIANCE_TLS_NAMES": "a.test,b.test"},
                             flags={"state_dir": str(tmp_path)})
    responder = HTTP01Responder()
    responder.add("TOKEN123", "TOKEN123.thumbprint")
    runner = web.AppRunner(build_redirect_app(s, 8443, responder))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/.well-known/acme-challenge/TOKEN123",
                                headers={"Host": "a.test"}) as resp:
                assert resp.status == 200
                assert await resp.text() == "TOKEN123.thumbprint"
            for path in ("/.well-known/acme-challenge/OTHER", "/.well-known/acme-challenge/%2e%2e",
                         "/.well-known/acme-challenge/TOKEN123/x"):
                async with http.get(base + path, allow_redirects=False) as resp:
                    assert resp.status in (404, 308), path
                    assert "thumbprint" not in await resp.text()
            async with http.post(f"{base}/.well-known/acme-challenge/TOKEN123",
                                 allow_redirects=False) as resp:
                assert resp.status == 308  # only GET answers a challenge
            async with http.get(f"{base}/x?y=1", headers={"Host": "evil.test"},
                                allow_redirects=False) as resp:
                assert resp.status == 308
                assert resp.headers["Location"] == "https://a.test:8443/x?y=1"
                # a redirect is a response like any other: the security headers are on it
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Server"] == "appliance"
                assert len(resp.headers["X-Request-Id"]) == 16
        responder.remove("TOKEN123")
        async with aiohttp.ClientSession() as http, http.get(
                f"{base}/.well-known/acme-challenge/TOKEN123") as resp:
            assert resp.status == 404
    finally:
        await runner.cleanup()


def _client_in_thread(dialer: Dialer, directory: str) -> BaseException | None:
    """Run an ACME directory fetch in a worker thread while this loop runs the dialer."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = ACMEClient(directory_url=directory, account_key_pem=Secret(new_key_pem()),
                            account_uri=None, email="", eab_kid="", eab_hmac_key=None,
                            ca_bundle=None, route=EgressRoute(dialer, loop),
                            responder=HTTP01Responder())
        try:
            client.directory()
        except BaseException as exc:
            return exc
        finally:
            client.close()
        return None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_acme_traffic_goes_through_the_egress_policy() -> None:
    denied = EgressSettings(source_address=(), mode="default", allow=(),
                            deny=("127.0.0.0/8",), allow_private=True)
    dialer = Dialer(PolicyHolder(denied))
    exc = _client_in_thread(dialer, "https://127.0.0.1:9/dir")
    assert isinstance(exc, ACMEEgressDenied)
    assert "denied by rule 'deny: 127.0.0.0/8'" in exc.message
    snapshot = dialer.counters.snapshot()
    assert snapshot["decisions"] == [{"purpose": "acme", "allowed": False,
                                      "rule": "deny: 127.0.0.0/8", "count": 1}]
    assert snapshot["connections"] == []  # no socket was opened

    metadata = Dialer(PolicyHolder(EgressSettings((), "default", (), (), True)))
    exc = _client_in_thread(metadata, "https://169.254.169.254/dir")
    assert isinstance(exc, ACMEEgressDenied) and "cloud metadata" in exc.message


def test_unreachable_directory_through_the_dialer_is_clear() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dialer = Dialer(PolicyHolder(EgressSettings((), "default", (), (), True)))
    exc = _client_in_thread(dialer, f"https://127.0.0.1:{port}/dir")
    assert isinstance(exc, ACMEUnreachable)
    assert "Connection refused" in exc.message and str(port) in exc.message
    assert dialer.counters.snapshot()["connections"] == [
        {"purpose": "acme", "outcome": "failed", "count": 1}]


# -- init --domain ---------------------------------------------------------------------------


def test_init_domain_writes_acme_settings_and_keeps_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('# mine\n[server]\nlisten = "127.0.0.1:8443"\n\n[tls]\nmode = "local"\n'
                      '[log]\nlevel = "warning"\n')
    before = config.read_text()
    result = run_verb("init", "--state-dir", str(tmp_path / "state"), "--config", str(config),
                     "--domain", "Data.Example.COM", "--email", "ops@example.com",
                     env=clean_env())
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    assert text.startswith("# mine\n")
    for line in before.splitlines():
        assert line in text  # nothing removed or changed
    loaded = settings_module.load(config_file=config, env={})
    assert loaded.tls.mode == "local"  # an explicit choice is left as it is, and said so
    assert loaded.tls.names == ("data.example.com",)
    assert loaded.tls.email == "ops@example.com"
    assert loaded.server.http_listen is not None and loaded.server.http_listen.port == 80
    assert loaded.log.level == "warning"
    assert "tls.mode = \"local\"" in result.stdout and "left as it is" in result.stdout
    # Idempotent: a second run changes nothing.
    again = run_verb("init", "--state-dir", str(tmp_path / "state"), "--config", str(config),
                    "--domain", "data.example.com", "--email", "ops@example.com",
                    env=clean_env())
    assert again.returncode == 0, again.stderr
    assert config.read_text() == text


def test_init_domain_creates_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "appliance.toml"
    result = run_verb("init", "--state-dir", str(tmp_path / "state"), "--config", str(config),
                     "--domain", "203.0.113.7", "--email", "ops@example.com", env=clean_env())
    assert result.returncode == 0, result.stderr
    loaded = settings_module.load(config_file=config, env={})
    assert loaded.tls.mode == "acme" and loaded.tls.names == ("203.0.113.7",)
    assert config.stat().st_mode & 0o007 == 0  # not world-readable (it may hold eab_hmac_key)


@pytest.mark.parametrize(("args", "message"), [
    (["--domain", "not a name", "--email", "a@b.example"], "--domain:"),
    (["--domain", "a.example", "--email", "nope"], "--email:"),
    (["--domain", "a.example"], "--domain and --email go together"),
])
def test_init_domain_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    config = tmp_path / "appliance.toml"
    result = run_verb("init", "--state-dir", str(tmp_path / "state"), "--config", str(config),
                     *args, env=clean_env())
    assert result.returncode == 2
    assert message in result.stderr
    assert not config.exists()
    assert not (tmp_path / "state").exists()


def test_renew_check_interval_setting() -> None:
    assert settings_module.load(env={}).tls.renew_check_interval == 600
    loaded = settings_module.load(env={"APPLIANCE_TLS_RENEW_CHECK_INTERVAL": "30"})
    assert loaded.tls.renew_check_interval == 30
    with pytest.raises(settings_module.ConfigError, match="APPLIANCE_TLS_RENEW_CHECK_INTERVAL"):
        settings_module.load(env={"APPLIANCE_TLS_RENEW_CHECK_INTERVAL": "0"})


def test_doctor_in_acme_mode_checks_names_and_port_80(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:8080"\n'
                      '[tls]\nmode = "acme"\nnames = ["localhost", "no-such-name.invalid", '
                      '"192.0.2.1"]\n')
    state = tmp_path / "state"
    assert run_verb("init", "--state-dir", str(state), "--config", str(config),
                   env=clean_env()).returncode == 0
    result = run_verb("doctor", "--state-dir", str(state), "--config", str(config),
                     env=clean_env())
    out = result.stdout
    assert result.returncode == 1, out
    assert "ok    acme name localhost: resolves to" in out
    assert "FAIL  acme name no-such-name.invalid: does not resolve" in out
    assert "ok    acme name 192.0.2.1: an IP address" in out
    assert "FAIL  acme http-01: server.http_listen is 127.0.0.1:8080, but CAs connect to port 80" \
        in out
    assert "acme certificate: none yet" in out


def test_next_wake_after_another_instances_lease() -> None:
    """Seen busy: wake just after the other's lease runs out, then never for it again (a lease
    seen expired must not make the loop spin)."""
    from typing import cast

    from appliance.store import Store
    from appliance.store.lease import Lease
    from appliance.tls.issuance import ACMEIssuer
    from appliance.tls.storage import ACMEStorage

    settings = settings_module.load(env={"APPLIANCE_TLS_MODE": "acme"})
    issuer = ACMEIssuer(settings.tls, cast(ACMEStorage, None), cast(Dialer, None),
                        HTTP01Responder(), lambda *_: None,
                        Lease(cast(Store, None), "acme:x", "me", 30), check_interval=600)
    assert issuer.next_wake(NOW) == 600
    issuer.busy = ("other", NOW + dt.timedelta(seconds=20))
    assert issuer.next_wake(NOW) == pytest.approx(20.05)
    assert issuer.next_wake(NOW + dt.timedelta(seconds=21)) == 600
