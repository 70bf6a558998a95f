"""Every ACME failure the appliance names: one hierarchy under `ACMEError` (itself a `TLSError`).

Each class is one cause a person can act on; the HTTP layer maps `status` and `code`. Never
carries a private key, an EAB key or a nonce in a message.
"""

from __future__ import annotations

import datetime as dt

from appliance.errors import TLSError


class ACMEError(TLSError):
    """The CA could not give us a certificate. `retry_at`: the earliest time the CA allows."""

    status = 502
    code = "acme_error"

    def __init__(self, message: str, *, retry_at: dt.datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class ACMEUnreachable(ACMEError):
    """No connection to the ACME directory (down, refused, timed out, name did not resolve)."""

    code = "acme_unreachable"


class ACMEUntrusted(ACMEError):
    """The ACME server's TLS certificate is not trusted (set `tls.ca_bundle` for a private CA)."""

    code = "acme_untrusted_ca"


class ACMEEgressDenied(ACMEError):
    """The egress policy refused the connection to the CA."""

    status = 403
    code = "acme_egress_denied"


class ACMEConfigError(ACMEError):
    """The CA refuses this configuration: EAB required, profile not offered, names refused."""

    status = 409
    code = "acme_config_error"


class ACMEBusy(ACMEError):
    """Another instance on the same store holds the ACME lease and is ordering right now."""

    status = 409
    code = "acme_busy"


class ACMEChallengeFailed(ACMEError):
    """The CA could not validate the HTTP-01 challenge for a name."""

    code = "acme_challenge_failed"


class ACMERateLimited(ACMEError):
    """The CA answered 429; `retry_at` holds its Retry-After."""

    status = 503
    code = "acme_rate_limited"


class ACMERejected(ACMEError):
    """The CA answered with an ACME problem document not covered above."""

    code = "acme_rejected"
