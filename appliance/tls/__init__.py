"""TLS for every listener: the live server context, its policy, and where certificates come from.

Modes: `local` (a local CA in the state dir), `files` (given PEM files). The private keys never
leave the state dir or the given files; nothing here logs key material.
"""

from appliance.tls.manager import TLSManager

__all__ = ["TLSManager"]
