"""`appliance trust [--uninstall]`: put the local CA (tls mode `local`) into the system's trust
store, or take it out, the way `caddy trust` does; and say how to do it for Firefox.

Owns the file it writes in the local CA directory (Debian: /usr/local/share/ca-certificates/)
and the call to `update-ca-certificates`, under a system root (`--root`, a temporary tree in
tests). Never reads or copies the CA's private key, and never creates a CA: `serve` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from appliance import state_dir
from appliance.cli.common import add_state_options, load_settings
from appliance.cli.install import mkdirs
from appliance.errors import ApplianceError

LOCAL_CERTS_DIR = Path("usr/local/share/ca-certificates")
UPDATE = "update-ca-certificates"
# update-ca-certificates's own paths, each under the root (its defaults when the root is /).
UPDATE_PATHS = (("--certsconf", "etc/ca-certificates.conf"),
                ("--certsdir", "usr/share/ca-certificates"),
                ("--localcertsdir", str(LOCAL_CERTS_DIR)),
                ("--etccertsdir", "etc/ssl/certs"),
                ("--hooksdir", "etc/ca-certificates/update.d"))


class TrustError(ApplianceError):
    code = "trust_error"
    exit_code = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "trust", help="install the local CA into the system trust store (tls mode local)",
        description="Install the local CA that signs this appliance's certificate in tls mode "
                    "'local' (the state directory's tls/ca.pem; `serve` creates it) into the "
                    "system trust store: /usr/local/share/ca-certificates/ and "
                    "update-ca-certificates (Debian, Ubuntu). --uninstall takes it out again. "
                    "Prints how to trust it in Firefox, which keeps its own store. Refused in "
                    "the other TLS modes (their certificates come from a CA you chose). Run as "
                    "root.")
    add_state_options(parser)
    parser.add_argument("--uninstall", action="store_true",
                        help="remove the local CA from the system trust store")
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="the system root whose trust store is changed (default /; tests "
                             "and image builds)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if settings.tls.mode != "local":
        issuer = ("a public CA browsers already trust" if settings.tls.mode == "acme"
                  else "the issuer of the files you chose (trust that one yourself)")
        raise TrustError(f"tls.mode is {settings.tls.mode!r}: its certificate comes from "
                         f"{issuer}; `appliance trust` installs only the local CA of tls mode "
                         "'local'")
    ca_file = settings.server.state_dir.absolute() / state_dir.TLS_DIR / "ca.pem"
    try:
        pem = ca_file.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except FileNotFoundError:
        raise TrustError(f"no local CA at {ca_file}: start `appliance serve` once (it creates "
                         "it), then run this again") from None
    except ValueError:
        raise TrustError(f"{ca_file} is not a PEM certificate: remove tls/ca.pem and "
                         "tls/ca.key and start `appliance serve` to create a new CA") from None
    digest = cert.fingerprint(hashes.SHA256()).hex()
    name = f"appliance-local-ca-{digest[:16]}.crt"
    target = args.root / LOCAL_CERTS_DIR / name
    if args.uninstall:
        if not target.exists():
            print(f"{target} is not installed: nothing to remove")
            return 0
        target.unlink()
        _update(args.root, fresh=True)
        print(f"removed {target} and updated the system trust store")
        print("Firefox: remove 'Appliance local CA' under Settings > Privacy & Security > "
              "Certificates > View Certificates > Authorities (or `certutil -D -n "
              "'Appliance local CA' -d sql:PROFILE_DIR`)")
        return 0
    if target.exists() and target.read_bytes() == pem:
        print(f"{target} is already installed")
    else:
        mkdirs(target.parent)  # 0755: every program reads the trust store
        tmp = target.with_name(f".{name}.new")
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o644)  # a CA certificate: public, every program reads it
        os.replace(tmp, target)
        print(f"installed {target} (SHA-256 {_colons(digest)})")
    _update(args.root, fresh=False)
    print("the system trust store now trusts the local CA (curl, Python, Chromium and Chrome "
          "on Linux read it)")
    print(firefox_hint(ca_file, Path('/') / LOCAL_CERTS_DIR / name))
    return 0


def _update(root: Path, *, fresh: bool) -> None:
    tool = shutil.which(UPDATE) or next(
        (p for p in ("/usr/sbin/" + UPDATE, "/sbin/" + UPDATE) if Path(p).exists()), None)
    if tool is None:
        raise TrustError(f"{UPDATE} is not installed (Debian/Ubuntu: apt install "
                         "ca-certificates); on other systems add the CA with the system's own "
                         "tool (Fedora: trust anchor FILE)")
    command = [tool]
    if root.resolve() != Path("/"):
        for flag, rel in UPDATE_PATHS:
            command += [flag, str(root / rel)]
    if fresh:
        command.append("--fresh")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TrustError(f"{UPDATE} failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[:300]}")


def firefox_hint(ca_file: Path, installed: Path) -> str:
    return (
        "Firefox keeps its own trust store. Either, per profile (certutil: apt install "
        "libnss3-tools):\n"
        f"  certutil -A -n 'Appliance local CA' -t C,, -i {ca_file} "
        "-d sql:$HOME/.mozilla/firefox/PROFILE_DIR\n"
        "or for every user, a policy in /etc/firefox/policies/policies.json:\n"
        f'  {{"policies": {{"Certificates": {{"Install": ["{installed}"]}}}}}}\n'
        "(on Windows and macOS the policy ImportEnterpriseRoots: true makes Firefox use the "
        "system store)")


def _colons(digest: str) -> str:
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2)).upper() + "…"
