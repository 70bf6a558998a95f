"""`appliance serve`: run the appliance (HTTPS on --listen; optional plain-HTTP redirector).

Owns the flags of the verb only; the work is in `appliance.server`.
"""

from __future__ import annotations

import argparse

import uvloop

from appliance import server
from appliance.cli.common import add_state_options, load_settings
from appliance.settings import Settings, load


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the appliance",
        description="Serve HTTPS on --listen. The plain-HTTP listener (--http-listen) only "
                    "redirects to HTTPS. --dev: state in ./.appliance, a local CA, "
                    "https://localhost:8443, created on first start.",
    )
    add_state_options(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", help="HTTPS listener")
    parser.add_argument("--http-listen", metavar="HOST:PORT",
                        help="plain-HTTP listener (redirects only)")
    parser.add_argument("--log-format", choices=("json", "text"), help="log format on stderr")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    flags = {"listen": args.listen, "http_listen": args.http_listen,
             "log_format": args.log_format, "log_level": args.log_level,
             "state_dir": args.state_dir}
    settings = load_settings(args, serving=True, **flags)

    def reload_settings() -> Settings:  # SIGHUP: the same file, environment and flags
        return load(config_file=args.config, flags=flags, dev=args.dev)

    # uvloop: asyncio's API on libuv, about a fifth less CPU per request than asyncio's own loop
    # (docs/performance.md). Everything in the server is plain asyncio and runs on either.
    return int(uvloop.run(server.serve(settings, reload_settings=reload_settings)))
