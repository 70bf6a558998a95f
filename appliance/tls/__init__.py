"""TLS for every listener: the live server context, its policy, and where certificates come from.

Modes: `local` (a local CA in the state dir), `files` (given PEM files), `acme` (an ACME CA over
HTTP-01; keys sealed by the keyring). Nothing here logs key material.
"""

from appliance.tls.manager import TLSManager

__all__ = ["TLSManager"]
