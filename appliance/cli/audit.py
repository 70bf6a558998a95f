"""`appliance audit verify | export | list`: check the audit log's chain (from the last verified
marker, or all of it with `--full`, or an export with `--file`); export a range; show recent
entries.

Only reads the log: never writes an entry. `verify` unseals the keyring (it needs every audit
key), which gives an upgraded store's keyring its first audit key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import IO

from appliance import state_dir
from appliance.audit import Verification
from appliance.audit.anchors import (
    AnchorResult,
    Anchors,
    AnchorSourceError,
    check_store_anchors,
    read_anchor_file,
    read_journal_anchors,
)
from appliance.audit.export import (
    ExportCheck,
    ExportError,
    Output,
    check_range,
    find_range,
    parse_time,
    verify_export,
    write_export,
)
from appliance.cli.common import add_state_options, load_settings
from appliance.core import open_core


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("audit", help="verify the audit log's hash chain; list entries",
                            description="The tamper-evident audit log.")
    verbs = parser.add_subparsers(dest="audit_verb", metavar="ACTION", required=True)
    p = verbs.add_parser("verify", help="check the chain; report the first broken link",
                         description="Walk the audit log and check every entry's MAC (or, "
                                     "before the upgrade to the keyed chain, its hash) and its "
                                     "link to the previous one: from the newest verified "
                                     "marker (written by `serve` in the background), or all "
                                     "of it with --full. Unseals the keyring. Exits 1 at the "
                                     "first broken link, naming its position.")
    add_state_options(p)
    p.add_argument("--full", action="store_true",
                   help="check every entry, not only those after the last verified marker")
    p.set_defaults(run=run_verify)
    p.add_argument("--anchors", metavar="FILE|journal", action=_AnchorsFlag,
                   help="also compare the store with anchors of its head: a file sink, the "
                        "appliance's JSON log or `journalctl -o json` output, or `journal`")
    p.add_argument("--file", metavar="FILE", type=Path,
                   help="check an export (`audit export`) instead of the store: its header, "
                        "every entry's MAC and link, and that it is whole")
    _register_export(verbs)
    p = verbs.add_parser("list", help="print the newest entries as JSON lines",
                         description="Print the newest entries, one JSON object per line.")
    add_state_options(p)
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.set_defaults(run=run_list)


async def _with_log(args: argparse.Namespace, work: str, limit: int = 50) -> object:
    settings = load_settings(args)
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, unseal=False) as core:
        if work == "verify":
            return await core.audit.verify(full=args.full)  # unseals: every audit key
        return await core.audit.page(descending=True, limit=limit)


def describe(result: Verification) -> str:
    """The verification as `audit verify` prints it: which walk, then what it found."""
    start = result.start
    if result.mode == "incremental" and start.marker is None:
        walk = "incremental: no verified marker yet, so from position 1"
    elif result.mode == "incremental":
        walk = (f"incremental from position {start.position + 1} (verified through "
                f"{start.position} at {start.marker_time} by the marker at {start.marker})")
    elif start.marker is not None:
        walk = (f"full from position {start.position + 1} (1 to {start.position} pruned, behind "
                f"the checkpoint at {start.marker})")
    else:
        walk = "full"
    if result.ok:
        return (f"{walk}: ok, {result.entries} entries checked, chain intact through position "
                f"{result.through} ({result.describe_chain()}; head {result.head[:16]}…)")
    return (f"{walk}: BROKEN at position {result.position}: {result.reason} "
            f"({result.entries} entries before it are intact; {result.describe_chain()})")


def run_verify(args: argparse.Namespace) -> int:
    if args.file is not None:
        return run_verify_file(args)
    result = asyncio.run(_with_log(args, "verify"))
    assert isinstance(result, Verification)
    print(describe(result))
    return 0 if result.ok else 1


def run_list(args: argparse.Namespace) -> int:
    entries = asyncio.run(_with_log(args, "list", args.limit))
    assert isinstance(entries, list)
    for entry in entries:
        print(json.dumps(entry, ensure_ascii=False, sort_keys=True))
    return 0


# -- verify --anchors (issue 24): the chain's own check, then the anchors against the store ----


class _AnchorsFlag(argparse.Action):
    """`--anchors X`: verify runs `run_verify_anchors` (the chain, then the anchors)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.run = run_verify_anchors


def run_verify_anchors(args: argparse.Namespace) -> int:
    """Exit 0 when the chain and every anchor agree, 1 when either is broken, 2 when the anchors
    cannot be read (nothing was compared)."""
    try:
        found = (read_journal_anchors() if args.anchors == "journal"
                 else read_anchor_file(args.anchors))
    except AnchorSourceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if not found.anchors:
        print(f"error: no anchor in {args.anchors} ({found.lines} lines, {found.malformed} "
              "malformed): nothing to compare", file=sys.stderr)
        return 2
    chain = run_verify(args)
    result = asyncio.run(_check_anchors(args, found))
    skipped = (f"; {result.pruned} before the first retained entry skipped" if result.pruned
               else "") + (f"; {result.malformed} malformed lines skipped" if result.malformed
                           else "")
    if result.ok:
        print(f"ok: {result.checked} anchors agree with the store{skipped}")
        return chain
    print(f"ANCHOR MISMATCH at position {result.position}: {result.reason}{skipped}")
    return max(chain, 1)


async def _check_anchors(args: argparse.Namespace, found: Anchors) -> AnchorResult:
    settings = load_settings(args)
    async with open_core(settings, unseal=False) as core:
        return await check_store_anchors(core.store, found)


# -- export, and verify --file (issue 24: retention) ---------------------------------------------


def _register_export(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser("export", help="write a range of entries as verifiable JSON lines",
                         description="Write the entries of a range (by time, RFC 3339, and/or "
                                     "by position, both ends included) as JSON lines, after a "
                                     "header that `audit verify --file` checks them against. "
                                     "Unseals the keyring (the header is MAC'd).")
    add_state_options(p)
    p.add_argument("--since", metavar="TIME", help="first entry at or after TIME")
    p.add_argument("--until", metavar="TIME", help="last entry at or before TIME")
    p.add_argument("--from-position", metavar="N", help="first position")
    p.add_argument("--to-position", metavar="N", help="last position")
    p.add_argument("--out", metavar="FILE", type=Path, required=True,
                   help="the file, or - for stdout")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(run=run_export)


def _position(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ExportError(f"{option}: {text!r} is not a position (1, 2, 3, …)")
    return int(text)


def run_export(args: argparse.Namespace) -> int:
    since = parse_time("--since", args.since) if args.since is not None else None
    until = parse_time("--until", args.until) if args.until is not None else None
    first = _position("--from-position", args.from_position)
    last = _position("--to-position", args.to_position)
    check_range(since=since, until=until, from_position=first, to_position=last)
    output = Output(str(args.out), force=args.force)
    output.check()
    written = asyncio.run(_export(args, output, since=since, until=until, first=first,
                                  last=last))
    if str(args.out) != "-":
        print(f"exported {written} entries to {args.out}", file=sys.stderr)
    return 0


async def _export(args: argparse.Namespace, output: Output, *, since: str | None,
                  until: str | None, first: int | None, last: int | None) -> int:
    settings = load_settings(args)
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, unseal=False, must_exist=True) as core:
        where = await find_range(core.store, since=since, until=until, from_position=first,
                                 to_position=last)
        if where.count == 0:
            raise ExportError("no entry in that range (none retained, or the range is empty)")
        keys = await core.audit.mac_keys()
        out = output.open()
        try:
            written = await write_export(core.store, keys, where, out, since=since, until=until)
        except BaseException:
            out.close()
            output.discard()
            raise
        output.commit(out)
        return written


def run_verify_file(args: argparse.Namespace) -> int:
    if args.anchors is not None:
        raise ExportError("--file checks an export; --anchors checks the store: one at a time")
    try:
        handle = open(args.file, "rb")
    except OSError as exc:
        raise ExportError(f"--file: cannot read {args.file}: {exc.strerror or exc}") from None
    with handle:
        check = asyncio.run(_verify_file(args, handle))
    result = check.result
    if result.ok:
        print(f"export ok: {result.entries} entries checked, positions {check.first} to "
              f"{check.last} intact ({result.describe_chain()}; head {result.head[:16]}…)")
        return 0
    print(f"export BROKEN at position {result.position}: {result.reason} ({result.entries} "
          "entries before it are intact)")
    return 1


async def _verify_file(args: argparse.Namespace, lines: IO[bytes]) -> ExportCheck:
    settings = load_settings(args)
    state_dir.check(settings.server.state_dir.absolute())
    async with open_core(settings, unseal=False, must_exist=True) as core:
        keys = await core.audit.mac_keys()  # unseals: every audit key
        return verify_export(lines, keys)
