"""When to renew and when to retry: the renewal policy as data (a ratio, a list of intervals).

Owns the arithmetic only: no network, no store. Never decides to replace a valid certificate
with one that is not newer (see `is_newer`).
"""

from __future__ import annotations

import datetime as dt

from appliance.tls.certificates import RENEW_REMAINING_RATIO, CertificateInfo

# After the n-th consecutive failure, wait BACKOFF[n-1] (the last entry repeats).
BACKOFF: tuple[dt.timedelta, ...] = tuple(
    dt.timedelta(minutes=m) for m in (1, 2, 5, 10, 30, 60, 120, 180, 240, 300, 360))
# Default seconds between renewal checks (`tls.renew_check_interval`).
CHECK_INTERVAL = 600.0
# Seconds between reads of the stored certificate's version: a certificate another instance
# stored is served here this long after at most (one indexed read each time).
FOLLOW_INTERVAL = 0.5
# Default seconds an instance's ACME lease lasts unrenewed (`tls.order_lease`): renewed every
# third of it while an order runs; a holder that dies frees it after this long.
ORDER_LEASE = 30.0
# After a failed renewal-information request, ask again after this long.
ARI_RETRY = dt.timedelta(hours=1)


def backoff(failures: int) -> dt.timedelta:
    """The wait after `failures` consecutive failures (>= 1)."""
    return BACKOFF[min(max(failures, 1), len(BACKOFF)) - 1]


def next_attempt_after_failure(now: dt.datetime, failures: int,
                               retry_at: dt.datetime | None) -> dt.datetime:
    """The schedule's next slot, or the CA's Retry-After when that is later."""
    when = now + backoff(failures)
    if retry_at is not None and retry_at > when:
        when = retry_at
    return when


def renew_at(info: CertificateInfo, ari_time: dt.datetime | None) -> dt.datetime:
    """ARI's suggested time when the CA gives one, else when a third of the lifetime remains."""
    if ari_time is not None:
        return min(ari_time, info.not_after)
    return info.not_after - info.lifetime * RENEW_REMAINING_RATIO


def is_newer(candidate: CertificateInfo, current: CertificateInfo | None) -> bool:
    """A certificate may replace the current one only if it is another certificate that starts
    no earlier and expires no earlier (a CA issuing twice in one second gives equal times)."""
    if current is None:
        return True
    return (candidate.fingerprint_sha256 != current.fingerprint_sha256
            and candidate.not_before >= current.not_before
            and candidate.not_after >= current.not_after)
