"""`appliance export DIR` and `appliance import DIR [--dry-run] [--prune] [--yes]` (both here,
as `backup` holds `restore`): datasources and queries as files in version control
(docs/queries-as-code.md).

Owns the two verbs' arguments, their output (the plan as a diff) and the confirmation. Never
prints a secret value: files and plans name secrets, never hold them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from appliance import state_dir
from appliance.cli.common import add_state_options, load_settings
from appliance.cli.users import cli_context
from appliance.config_files import (
    Plan,
    apply_plan,
    check_export_target,
    export_files,
    plan_import,
    read_directory,
    write_export,
)
from appliance.core import open_core
from appliance.errors import ApplianceError


class NotConfirmed(ApplianceError):
    code = "not_confirmed"
    exit_code = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write every datasource and query as files",
                       description="Write every datasource (its config; of its secrets only "
                                   "the names of those set) and every query (its body and its "
                                   "metadata) as files in DIR, for version control. DIR must be "
                                   "absent, empty or an earlier export; it is replaced whole.")
    add_state_options(p)
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(run=run_export)

    p = sub.add_parser("import", help="make the datasources and queries match files",
                       description="Make the store's datasources and queries match the export "
                                   "in DIR, in one transaction: print the plan as a diff, then "
                                   "apply it. Ids are kept. A datasource whose secrets are not "
                                   "set here is created and reported as needing them.")
    add_state_options(p)
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--prune", action="store_true",
                   help="also delete the datasources and queries the files do not have")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.set_defaults(run=run_import)


def run_export(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    state_dir.check(settings.server.state_dir.absolute())
    check_export_target(args.dir)  # before the store is read (and the export audited)

    async def main() -> dict[str, str]:
        async with open_core(settings, must_exist=True, writing=True) as core:
            return await export_files(core.datasources, core.queries, core.audit,
                                      cli_context())

    files = asyncio.run(main())
    write_export(args.dir, files)
    print(f"exported {len(files)} files to {args.dir}")
    return 0


def print_plan(plan: Plan) -> None:
    print(f"plan: {plan.summary()}")
    for change in plan.pending:
        print(f"  {change.action} {change.type} {change.name} ({change.id})")
    for name, fields in plan.needs_secrets().items():
        print(f"needs secrets: datasource '{name}': {', '.join(fields)} (enter them before "
              "it can run)")
    diff = plan.diff()
    if diff:
        print()
        sys.stdout.write(diff)
    sys.stdout.flush()


def _confirm(args: argparse.Namespace) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed("not applied: pass --yes to apply without a prompt (or --dry-run)")
    answer = input("apply this plan? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise NotConfirmed("not applied")


def run_import(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    state_dir.check(settings.server.state_dir.absolute())
    files = read_directory(args.dir)  # a malformed file stops here, before the store opens

    async def main() -> None:  # a dry run writes no entry: it never needs the audit sinks
        async with open_core(settings, must_exist=True, writing=not args.dry_run) as core:
            plan = await plan_import(files, core.datasources, core.queries, prune=args.prune)
            print_plan(plan)
            if args.dry_run:
                print("dry run: nothing changed")
                return
            if not plan.pending:
                print("nothing to change")
                return
            _confirm(args)
            print("applying…", flush=True)
            started = time.monotonic()
            await apply_plan(plan, core.store, core.datasources, core.queries, core.audit,
                             cli_context())
            print(f"applied in one transaction ({time.monotonic() - started:.1f} s): "
                  f"{plan.summary()}")

    asyncio.run(main())
    return 0
