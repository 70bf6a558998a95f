"""The private `acme` names the appliance uses: `ClientV2._post` and `ClientV2._post_as_get`.

Owns that access, and nothing else reaches into `acme`'s private names. What it buys: an order
that carries `replaces` (ARI, RFC 9773 §5), which the public `ClientV2.new_order(csr_pem,
profile)` cannot send, and polls of an order bounded by the issuer's own deadline (the public
`poll_finalization` neither re-finalizes an order that became ready late nor returns before its
deadline passes). Both wrappers add the directory's newNonce URL and retry once on badNonce, as
the client does for its own requests. There is no speed figure here: the reason is a protocol
field, not a benchmark. `tests/test_acme_private.py` fails loudly if `acme` renames them or changes
what they return (the pin in pyproject.toml is `acme>=5,<6`). Never logs a JWS, a nonce or a key.
"""

from __future__ import annotations

import requests
from acme import client
from josepy.interfaces import JSONDeSerializable


def post(acme: client.ClientV2, url: str, obj: JSONDeSerializable) -> requests.Response:
    """POST `obj` to `url` as a JWS signed with the account key."""
    return acme._post(url, obj)


def post_as_get(acme: client.ClientV2, url: str) -> requests.Response:
    """Read `url` with RFC 8555's POST-as-GET (an empty signed body)."""
    return acme._post_as_get(url)
