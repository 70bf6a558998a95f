"""Talking to the ACME CA (RFC 8555) through the `acme` package: account, order, HTTP-01, ARI.

Synchronous by design: it runs in a worker thread, never on the event loop. Extends the package's
order message with `replaces` (ARI). Never logs a key, a nonce, a JWS or the EAB HMAC key.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.json_util import field
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from appliance.egress import EgressDenied
from appliance.secret import Secret
from appliance.tls import acme_private
from appliance.tls.errors import (
    ACMEChallengeFailed,
    ACMEConfigError,
    ACMEEgressDenied,
    ACMEError,
    ACMERateLimited,
    ACMERejected,
    ACMEUnreachable,
    ACMEUntrusted,
)
from appliance.tls.http01 import HTTP01Responder
from appliance.tls.transport import EgressRoute, session_for

log = logging.getLogger("appliance.tls.acme")

USER_AGENT = "appliance-acme (acme-python)"
NETWORK_TIMEOUT = 30
ORDER_DEADLINE = dt.timedelta(seconds=120)
# Polling: start fast (a local CA validates in milliseconds), back off to 2 s.
POLL_FIRST, POLL_MAX, POLL_GROWTH = 0.02, 2.0, 1.5
SHORTLIVED = "shortlived"


class NewOrder(messages.NewOrder):
    """The package's new-order message plus ARI's `replaces` (draft-ietf-acme-ari §5)."""

    replaces: str | None = field("replaces", omitempty=True)


def ari_cert_id(cert_pem: bytes) -> str:
    """The ARI certificate identifier (RFC 9773 §4.1): base64url(AKI keyIdentifier) '.'
    base64url(the serial's DER INTEGER content octets), both unpadded.

    Computed here rather than by `acme`'s private `_renewal_info_path_component`; the tests check
    that the two agree."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("the certificate's authority key identifier has no keyIdentifier")
    serial = cert.serial_number
    # DER INTEGER: big-endian two's complement in the fewest octets, so one more bit for the sign
    # (a serial whose top bit is set gets a leading zero octet).
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_der)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key_pem() -> bytes:
    """A fresh ECDSA P-256 key, PKCS#8 PEM."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _jwk(key_pem: bytes) -> JWKEC:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ACMEError("the stored ACME account key is not an ECDSA key")
    return JWKEC(key=key)


class ACMEClient:
    """One conversation with one CA directory, for one account key."""

    def __init__(self, *, directory_url: str, account_key_pem: Secret[bytes],
                 account_uri: str | None, email: str, eab_kid: str,
                 eab_hmac_key: Secret[str] | None, ca_bundle: Path | None,
                 route: EgressRoute, responder: HTTP01Responder) -> None:
        self.directory_url = directory_url
        self.account_uri = account_uri
        self.email = email
        self._eab_kid = eab_kid
        self._eab_hmac_key = eab_hmac_key
        self._key = _jwk(account_key_pem.reveal())
        self._responder = responder
        self._net = client.ClientNetwork(self._key, alg=ES256, user_agent=USER_AGENT,
                                         timeout=NETWORK_TIMEOUT)
        self._net.session.close()
        self._net.session, self._adapter = session_for(route)
        self._route = route
        # requests takes a CA bundle path where the package types a bool.
        verify = str(ca_bundle) if ca_bundle else True
        self._net.verify_ssl = verify  # type: ignore[assignment]  # a path or True (above)
        self._client: client.ClientV2 | None = None
        self.orders_placed = 0

    def close(self) -> None:
        self._net.session.close()

    def stop(self) -> None:
        """From the event loop, while a worker thread talks to the CA: its conversation ends at
        its next step (a request under way fails at once, and no new connection is opened)."""
        self._route.stop()

    # -- directory and account ------------------------------------------------------------------

    def directory(self) -> messages.Directory:
        if self._client is None:
            with self.explain("reading the ACME directory"):
                directory = client.ClientV2.get_directory(self.directory_url, self._net)
            self._client = client.ClientV2(directory, self._net)
        return self._client.directory

    def has_ari(self) -> bool:
        try:
            self.directory()["renewalInfo"]
        except KeyError:
            return False
        return True

    def offered_profiles(self) -> dict[str, str]:
        meta = getattr(self.directory(), "meta", None)
        return dict(getattr(meta, "profiles", None) or {})

    def _acme(self) -> client.ClientV2:
        self.directory()
        assert self._client is not None
        return self._client

    def ensure_account(self) -> str:
        """Register the account key once (or find its account); return the account URL."""
        acme = self._acme()
        if self.account_uri:
            self._net.account = messages.RegistrationResource(
                uri=self.account_uri, body=messages.Registration())
            return self.account_uri
        eab = None
        if acme.external_account_required() or self._eab_kid:
            if not (self._eab_kid and self._eab_hmac_key):
                raise ACMEConfigError(
                    f"the CA at {self.directory_url} requires External Account Binding: set "
                    "tls.eab_kid and tls.eab_hmac_key (from the CA's account page)")
            try:
                eab = messages.ExternalAccountBinding.from_data(
                    account_public_key=self._key.public_key(), kid=self._eab_kid,
                    hmac_key=self._eab_hmac_key.reveal(), directory=acme.directory)
            except (ValueError, TypeError):
                raise ACMEConfigError(
                    "tls.eab_hmac_key is not base64url: copy it exactly as the CA shows it"
                ) from None
        registration = messages.NewRegistration.from_data(
            email=self.email or None, terms_of_service_agreed=True,
            external_account_binding=eab)
        with self.explain("registering the ACME account"):
            try:
                regr = acme.new_account(registration)
                uri = regr.uri
            except acme_errors.ConflictError as exc:  # the key already has an account
                uri = str(exc)
                self._net.account = messages.RegistrationResource(
                    uri=uri, body=messages.Registration())
        self.account_uri = uri
        log.info("acme account registered", extra={"directory": self.directory_url})
        return uri

    # -- issuance -------------------------------------------------------------------------------

    def choose_profile(self, names: tuple[str, ...], configured: str) -> str | None:
        offered = self.offered_profiles()
        if configured:
            if configured not in offered:
                what = ", ".join(sorted(offered)) if offered else "no profiles"
                raise ACMEConfigError(
                    f"tls.profile {configured!r} is not offered by the CA at "
                    f"{self.directory_url} (it offers {what})")
            return configured
        if any(_is_ip(n) for n in names) and SHORTLIVED in offered:
            return SHORTLIVED
        return None

    def issue(self, names: tuple[str, ...], cert_key_pem: Secret[bytes], *, profile: str,
              replaces: str | None) -> bytes:
        """Order, answer HTTP-01, finalize; return the full chain PEM."""
        acme = self._acme()
        chosen = self.choose_profile(names, profile)
        self.ensure_account()
        dns = [n for n in names if not _is_ip(n)]
        ips = [ipaddress.ip_address(n) for n in names if _is_ip(n)]
        csr_pem = crypto_util.make_csr(cert_key_pem.reveal(), domains=dns or None,
                                       ipaddrs=ips or None)
        deadline = time.monotonic() + ORDER_DEADLINE.total_seconds()
        try:
            orderr = self._new_order(acme, csr_pem, chosen, replaces)
        except ACMERejected as exc:
            if "accountDoesNotExist" not in exc.message:
                raise
            # The CA forgot the account (a reset test CA, a deactivated account): register the
            # same key again, once.
            self.account_uri = None
            self._net.account = None  # a new registration is signed with the JWK, not a kid
            self.ensure_account()
            orderr = self._new_order(acme, csr_pem, chosen, replaces)
        tokens: list[str] = []
        try:
            with self.explain("answering the HTTP-01 challenge"):
                for authzr in orderr.authorizations:
                    if authzr.body.status == messages.STATUS_VALID:
                        continue
                    challb = next((c for c in authzr.body.challenges
                                   if isinstance(c.chall, challenges.HTTP01)), None)
                    if challb is None:
                        raise ACMEConfigError(
                            f"the CA offers no http-01 challenge for "
                            f"{authzr.body.identifier.value}")
                    response, validation = challb.response_and_validation(self._key)
                    token = challb.chall.encode("token")
                    self._responder.add(token, validation)
                    tokens.append(token)
                    acme.answer_challenge(challb, response)
            self._wait_authorizations(acme, orderr, deadline)
            return self._finalize(acme, orderr, deadline)
        finally:
            for token in tokens:
                self._responder.remove(token)

    def _new_order(self, acme: client.ClientV2, csr_pem: bytes, profile: str | None,
                   replaces: str | None) -> messages.OrderResource:
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, ip_addrs = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n)
                       for n in dns_names]
        identifiers += [messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(ip))
                        for ip in ip_addrs]
        order = NewOrder(identifiers=identifiers, profile=profile, replaces=replaces)
        with self.explain("placing the order"):
            self.orders_placed += 1
            response = acme_private.post(acme, acme.directory["newOrder"], order)
            body = messages.Order.from_json(response.json())
            authorizations = [_authorization(acme, url) for url in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr_pem)

    def _wait_authorizations(self, acme: client.ClientV2, orderr: messages.OrderResource,
                             deadline: float) -> None:
        with self.explain("waiting for validation"):
            for url in orderr.body.authorizations:
                delay = POLL_FIRST
                while True:
                    authzr = _authorization(acme, url)
                    status = authzr.body.status
                    if status == messages.STATUS_VALID:
                        break
                    if status != messages.STATUS_PENDING:
                        raise ACMEChallengeFailed(_validation_failure(authzr))
                    if time.monotonic() > deadline:
                        raise ACMEError("the CA did not validate the challenge in time")
                    time.sleep(delay)
                    delay = min(delay * POLL_GROWTH, POLL_MAX)

    def _finalize(self, acme: client.ClientV2, orderr: messages.OrderResource,
                  deadline: float) -> bytes:
        with self.explain("finalizing the order"):
            try:
                acme.begin_finalization(orderr)
            except messages.Error as exc:
                if exc.code != "orderNotReady":
                    raise
            delay = POLL_FIRST
            while time.monotonic() < deadline:
                response = acme_private.post_as_get(acme, orderr.uri)
                body = messages.Order.from_json(response.json())
                if body.status == messages.STATUS_VALID and body.certificate:
                    return acme_private.post_as_get(acme, body.certificate).text.encode()
                if body.status == messages.STATUS_INVALID:
                    detail = body.error.detail if body.error else "no reason given"
                    raise ACMERejected(f"the CA refused to issue the certificate: {detail}")
                if body.status == messages.STATUS_READY:
                    acme.begin_finalization(orderr)
                time.sleep(delay)
                delay = min(delay * POLL_GROWTH, POLL_MAX)
        raise ACMEError("the CA did not issue the certificate in time")

    # -- ARI ------------------------------------------------------------------------------------

    def renewal_window(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        """(ARI's suggested renewal time or None without ARI, when to ask again), both UTC."""
        acme = self._acme()
        with self.explain("fetching ACME renewal information"):
            try:
                when, again = acme.renewal_time(cert_pem)
            except acme_errors.ARIError as exc:
                raise ACMEError(f"the CA's renewal information could not be read: "
                                f"{_describe(exc.__cause__)}") from None
        return (_utc(when) if when is not None else None), _utc(again)

    # -- errors ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def explain(self, doing: str) -> Iterator[None]:
        """Turn whatever the package or the network raised into one clear `ACMEError`."""
        self._adapter.retry_after = None
        try:
            yield
        except ACMEError:
            raise
        except EgressDenied as exc:
            raise ACMEEgressDenied(f"{doing}: {exc.message}") from None
        except requests.exceptions.SSLError as exc:
            raise ACMEUntrusted(
                f"{doing}: the TLS certificate of {self.directory_url} is not trusted "
                f"({_ssl_reason(exc)}); for a private CA set tls.ca_bundle") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise ACMEUnreachable(
                f"{doing}: cannot reach {self.directory_url} ({_describe(exc)})") from None
        except messages.Error as exc:
            detail = exc.detail or exc.description or "no detail"
            code = exc.code or "unknown"
            if code == "rateLimited":
                raise ACMERateLimited(f"{doing}: rate limited by the CA: {detail}",
                                      retry_at=self._adapter.retry_after) from None
            if code == "externalAccountRequired":
                raise ACMEConfigError(
                    f"{doing}: the CA requires External Account Binding: set tls.eab_kid and "
                    "tls.eab_hmac_key") from None
            if code in ("rejectedIdentifier", "unsupportedIdentifier", "caa", "invalidProfile"):
                raise ACMEConfigError(f"{doing}: the CA refused: {detail} ({code})") from None
            raise ACMERejected(f"{doing}: the CA answered {code}: {detail}") from None
        except acme_errors.Error as exc:
            raise ACMERejected(f"{doing}: {_describe(exc)}") from None
        except (ValueError, DeserializationError) as exc:
            raise ACMERejected(f"{doing}: the CA's answer was not understood "
                               f"({type(exc).__name__})") from None


def _authorization(acme: client.ClientV2, url: str) -> messages.AuthorizationResource:
    """The authorization at `url` as the CA holds it now (the client's public poll, given only the
    address: the order names its authorizations by URL)."""
    authzr, _ = acme.poll(messages.AuthorizationResource(uri=url, body=messages.Authorization()))
    return authzr


def _validation_failure(authzr: messages.AuthorizationResource) -> str:
    name = authzr.body.identifier.value
    for chall in authzr.body.challenges:
        if chall.error is not None:
            return (f"the CA could not validate {name} over HTTP-01: "
                    f"{chall.error.detail or chall.error.code} (is port 80 of {name} reaching "
                    "this appliance's plain-HTTP listener?)")
    return f"the CA marked {name} {authzr.body.status.name} without a reason"


def _ssl_reason(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        start = text.find("certificate verify failed")
        return text[start:].split(")")[0] if start >= 0 else "certificate verify failed"
    return "TLS handshake failed"


def _describe(exc: BaseException | None) -> str:
    seen: list[str] = []
    while exc is not None and len(seen) < 6:
        reason = getattr(exc, "reason", None)
        text = str(reason if isinstance(reason, BaseException) else exc)
        if text and text not in seen:
            seen.append(text)
        exc = exc.__cause__ or exc.__context__
    last = seen[-1] if seen else "unknown error"
    for marker in ("Connection refused", "timed out", "Name or service not known",
                   "cannot connect", "cannot resolve"):
        for text in seen:
            if marker in text:
                return text.split("Failed to establish a new connection: ")[-1][:300]
    return last[:300]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _utc(when: dt.datetime) -> dt.datetime:
    """The package mixes aware UTC and naive local times: make both aware UTC (a naive time is
    read as local time by `astimezone`)."""
    return when.astimezone(dt.UTC)
