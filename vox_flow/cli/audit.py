"""`vox-flow audit`: verify, export and checkpoint the signed audit log."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vox_flow.audit import export
from vox_flow.audit.body import datetime_to_us
from vox_flow.audit.keys import CONTROL_KEY, key_path, load_or_create
from vox_flow.audit.log import AuditLog
from vox_flow.audit.verify import verify_checkpoint, verify_export, verify_store
from vox_flow.config import load_settings
from vox_flow.store import open_store

if TYPE_CHECKING:
    import argparse

    from vox_flow.contracts.audit import VerifyReport


def register(sub: Any) -> None:
    """Add the `audit` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser("audit", help="the signed audit log")
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify = commands.add_parser(
        "verify", help="check every hash, signature and key; exit 1 naming the first bad entry"
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint file kept elsewhere (detects a cut tail)",
    )
    verify.add_argument("--export", type=Path, help="verify this export file offline")
    verify.add_argument("--keys", type=Path, help="public keys file (with --export)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_verify)

    exp = commands.add_parser("export", help="write entries as JSONL, verifiable offline")
    exp.add_argument(
        "--since", default="1", help="first entry: a sequence number or an ISO 8601 time"
    )
    exp.add_argument("--out", type=Path, help="JSONL file (default: stdout)")
    exp.add_argument("--keys-out", type=Path, help="also write the public keys file")
    exp.set_defaults(handler=_export)

    checkpoint = commands.add_parser("checkpoint", help="sign a checkpoint of the log now")
    checkpoint.add_argument("--out", type=Path, help="also write it to this file")
    checkpoint.set_defaults(handler=_checkpoint)

    keys = commands.add_parser("keys", help="list registered keys")
    keys.set_defaults(handler=_keys)


def _report(report: VerifyReport, as_json: bool) -> int:
    if as_json:
        print(report.model_dump_json(indent=2))
    elif report.ok:
        root = f", root {report.root_hash}" if report.root_hash else ""
        last = report.first_seq + report.entries - 1
        span = f"{report.entries} entries ({report.first_seq}..{last})"
        print(f"ok: {span}, head {report.head_hash}{root}")
    else:
        assert report.problem is not None
        where = f"entry {report.problem.seq}" if report.problem.seq is not None else "log"
        print(f"FAILED at {where}: {report.problem.reason}", file=sys.stderr)
    return 0 if report.ok else 1


def _verify(args: argparse.Namespace) -> int:
    checkpoints = [export.read_checkpoint(path) for path in args.checkpoint]
    if args.export is not None:
        if args.keys is None:
            raise SystemExit("vox-flow audit verify --export needs --keys FILE")
        keys = export.read_keys(args.keys)
        return _report(verify_export(args.export, keys, checkpoints), args.json)
    store = open_store(load_settings())
    return _report(verify_store(store, checkpoints=checkpoints), args.json)


def _first_seq(log: AuditLog, since: str) -> int:
    if since.isdigit():
        return int(since)
    try:
        return log.first_seq_since(datetime_to_us(datetime.fromisoformat(since)))
    except ValueError as error:
        raise SystemExit(f"--since: {since!r} is neither a sequence number nor a time") from error


def _export(args: argparse.Namespace) -> int:
    log = AuditLog(open_store(load_settings()))
    first = _first_seq(log, args.since)
    if args.keys_out is not None:
        export.write_keys(log.keys(), args.keys_out)
    if args.out is None:
        export.write_entries(log.entries(first), sys.stdout)
    else:
        with args.out.open("w") as out:
            count = export.write_entries(log.entries(first), out)
        print(f"wrote {count} entries from {first} to {args.out}", file=sys.stderr)
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    settings = load_settings()
    log = AuditLog(open_store(settings))
    signer = load_or_create(key_path(settings.data_dir, CONTROL_KEY), CONTROL_KEY)
    log.register(signer)
    checkpoint = log.checkpoint(signer)
    problem = verify_checkpoint(checkpoint, log.keys())
    if problem is not None:
        raise SystemExit(f"the new checkpoint does not verify: {problem}")
    if args.out is not None:
        export.write_checkpoint(checkpoint, args.out)
    print(checkpoint.model_dump_json(indent=2))
    return 0


def _keys(args: argparse.Namespace) -> int:
    log = AuditLog(open_store(load_settings()))
    for key in log.keys():  # noqa: SIM118 - a method, not a dict
        retired = f" retired after entry {key.retired_after_seq}" if key.retired_at else ""
        print(f"{key.key_id} {key.owner} {key.public_key}{retired}")
    return 0
