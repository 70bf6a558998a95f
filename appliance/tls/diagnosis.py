"""What `appliance doctor` checks in acme mode: the names resolve, port 80 reaches the plain-HTTP
listener, and the stored certificate's state.

Only reads (DNS, one local HTTP request, the store); never orders, never writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import ipaddress
import socket

from appliance.errors import StoreError
from appliance.settings import Settings
from appliance.store.opener import inspected_store, sqlite_path
from appliance.tls.http01 import PATH_PREFIX

# (name, ok, detail, fix)
Finding = tuple[str, bool, str, str]
_PROBE = "appliance-doctor-probe"


def acme_checks(settings: Settings) -> list[Finding]:
    return [*_names(settings), _port80(settings), _stored(settings)]


def _names(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    for name in settings.tls.names:
        try:
            ipaddress.ip_address(name)
            out.append((f"acme name {name}", True, "an IP address (no DNS needed)", ""))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            out.append((f"acme name {name}", False, f"does not resolve ({exc})",
                        f"create an A (and/or AAAA) record for {name} pointing at this host's "
                        "public address"))
            continue
        addresses = sorted({str(info[4][0]) for info in infos})
        out.append((f"acme name {name}", True, f"resolves to {', '.join(addresses)}", ""))
    return out


def _port80(settings: Settings) -> Finding:
    endpoint = settings.server.http_listen
    name = "acme http-01"
    if endpoint is None:
        return (name, False, "no plain-HTTP listener: the CA cannot reach the HTTP-01 challenge",
                'set server.http_listen = "0.0.0.0:80" and open port 80 in the firewall')
    if endpoint.port != 80:
        return (name, False, f"server.http_listen is {endpoint}, but CAs connect to port 80",
                'set server.http_listen = "0.0.0.0:80" (or forward port 80 to it)')
    host = endpoint.host if endpoint.host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    try:
        conn = http.client.HTTPConnection(host, 80, timeout=3)
        conn.request("GET", PATH_PREFIX + _PROBE, headers={"Host": settings.tls.names[0]})
        resp = conn.getresponse()
        body = resp.read(200)
    except OSError:
        return (name, True, "nothing listens on port 80 now; `appliance serve` will listen there",
                "")
    if resp.status == 404 and b"no such ACME challenge" in body:
        return (name, True, "port 80 is listened on by the appliance's HTTP-01 responder", "")
    return (name, False, f"something else answers on port 80 (HTTP {resp.status})",
            "stop the other web server on port 80, or forward /.well-known/acme-challenge/ "
            "to the appliance")


def _stored(settings: Settings) -> Finding:
    path = sqlite_path(settings)
    name = "acme certificate"
    if path is not None and not path.exists():
        return (name, True, "none yet: obtained at the first `appliance serve`", "")

    async def read() -> dict[str, object] | None:
        try:
            async with inspected_store(settings) as store:
                try:
                    return await store.fetch_one(
                        "SELECT not_after, renew_at, last_error, failures, next_attempt "
                        "FROM acme_certificates WHERE names = ?",
                        (",".join(sorted(set(settings.tls.names))),))
                except Exception:  # the table does not exist before the first serve migrates
                    return None
        except StoreError:
            return None  # the store check says why

    row = asyncio.run(read())
    if row is None or row["not_after"] is None:
        error = f"; last error: {row['last_error']}" if row and row["last_error"] else ""
        return (name, row is None or not row["last_error"],
                f"none yet for {', '.join(settings.tls.names)}{error}",
                "see docs/tls.md (firewall, DNS, staging first)")
    not_after = dt.datetime.fromtimestamp(float(str(row["not_after"])), dt.UTC)
    days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    detail = f"{days:.0f} days left (until {not_after:%Y-%m-%d})"
    if row["last_error"]:
        detail += f"; last renewal attempt failed ({row['failures']}x): {row['last_error']}"
    return (name, days >= 7, detail, "" if days >= 7 else "see docs/tls.md; POST /api/v1/tls/renew")
