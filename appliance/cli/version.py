"""`appliance version`: this build's version, commit, Python, OpenSSL and key libraries.

Reads nothing from the state directory.
"""

from __future__ import annotations

import argparse
import platform
import ssl

from appliance import __version__
from appliance.build_info import commit

DEPENDENCIES = ("aiohttp", "aiosqlite", "cryptography")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("version", help="print version, commit and library versions",
                            description="Print the version, the git commit this build comes from, "
                                        "Python, OpenSSL and the key libraries' versions.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from importlib import metadata  # only here: it pulls in csv, email and zipfile

    print(f"appliance {__version__}")
    print(f"commit {commit()}")
    print(f"python {platform.python_version()} ({platform.python_implementation()})")
    print(f"openssl {ssl.OPENSSL_VERSION}")
    for name in DEPENDENCIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "unknown"
        print(f"{name} {version}")
    return 0
