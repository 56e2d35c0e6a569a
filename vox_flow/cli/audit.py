"""`vox-flow audit`: verify, export and checkpoint the signed audit log.

None of these creates a store: with none at the configured URL they say so and fail.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vox_flow.cli import common

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from vox_flow.audit.log import AuditLog
    from vox_flow.contracts.audit import VerifyReport

_T = TypeVar("_T")


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
    common.add_json(verify)
    verify.set_defaults(handler=_verify)

    exp = commands.add_parser("export", help="write entries as JSONL, verifiable offline")
    exp.add_argument(
        "--since", default="1", help="first entry: a sequence number or an ISO 8601 time"
    )
    exp.add_argument("--out", type=Path, help="JSONL file (default: stdout)")
    exp.add_argument("--keys-out", type=Path, help="also write the public keys file")
    exp.add_argument(
        "--json", action="store_true", help="with --out: what was written, as one JSON document"
    )
    exp.set_defaults(handler=_export)

    checkpoint = commands.add_parser("checkpoint", help="sign a checkpoint of the log now")
    checkpoint.add_argument("--out", type=Path, help="also write it to this file")
    common.add_json(checkpoint)
    checkpoint.set_defaults(handler=_checkpoint)

    keys = commands.add_parser("keys", help="list registered keys")
    common.add_json(keys)
    keys.set_defaults(handler=_keys)


def _read(option: str, path: Path, what: str, reader: Callable[[Path], _T]) -> _T:
    """``reader(path)``, a file the user named: a missing or garbled one is refused, naming
    the option and the file."""
    try:
        return reader(path)
    except OSError as exc:
        raise common.refused(f"{option} {path}: {exc.strerror or exc}", "bad_input") from None
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise common.refused(f"{option} {path} is not {what}: {_first(exc)}", "bad_input") from None


def _first(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # a pydantic ValidationError: its first error, without the URL
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)


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
    return common.OK if report.ok else common.FAILED


def _verify(args: argparse.Namespace) -> int:
    from vox_flow.audit import export  # pydantic: not for --help

    checkpoints = [
        _read("--checkpoint", path, "a checkpoint", export.read_checkpoint)
        for path in args.checkpoint
    ]
    if args.export is not None:
        from vox_flow.audit.verify import verify_export  # PyNaCl: not for --help

        if args.keys is None:
            raise common.refused("--export needs --keys FILE (the public keys)", "usage")
        keys = _read("--keys", args.keys, "a keys file", export.read_keys)
        report = _read(
            "--export",
            args.export,
            "an audit export",
            lambda path: verify_export(path, keys, checkpoints),
        )
        return _report(report, args.json)
    store = common.open_store(create=False)
    from vox_flow.audit.verify import verify_store

    try:
        return _report(verify_store(store, checkpoints=checkpoints), args.json)
    finally:
        store.dispose()


def _log() -> AuditLog:
    store = common.open_store(create=False)
    from vox_flow.audit.log import AuditLog  # PyNaCl: not for --help

    return AuditLog(store)


def _first_seq(log: AuditLog, since: str) -> int:
    from vox_flow.audit.body import datetime_to_us

    if since.isdigit():
        return int(since)
    try:
        return log.first_seq_since(datetime_to_us(datetime.fromisoformat(since)))
    except ValueError:
        raise common.refused(
            f"--since: {since!r} is neither a sequence number nor an ISO 8601 time", "usage"
        ) from None


def _export(args: argparse.Namespace) -> int:
    from vox_flow.audit import export

    if args.json and args.out is None:
        raise common.refused(
            "--json needs --out FILE (without it the entries themselves go to stdout, one "
            "JSON document a line)",
            "usage",
        )
    log = _log()
    first = _first_seq(log, args.since)
    if args.keys_out is not None:
        export.write_keys(log.keys(), args.keys_out)
    if args.out is None:
        export.write_entries(log.entries(first), sys.stdout)
        return common.OK
    with args.out.open("w") as out:
        count = export.write_entries(log.entries(first), out)
    if args.json:
        keys_out = None if args.keys_out is None else str(args.keys_out)
        common.emit({"entries": count, "first": first, "out": str(args.out), "keys": keys_out})
    else:
        print(f"wrote {count} entries from {first} to {args.out}", file=sys.stderr)
    return common.OK


def _checkpoint(args: argparse.Namespace) -> int:
    from vox_flow.audit import export
    from vox_flow.audit.keys import CONTROL_KEY, key_path, load_or_create
    from vox_flow.audit.verify import verify_checkpoint

    settings = common.settings()
    log = _log()
    signer = load_or_create(key_path(settings.data_dir, CONTROL_KEY), CONTROL_KEY)
    log.register(signer)
    checkpoint = log.checkpoint(signer)
    problem = verify_checkpoint(checkpoint, log.keys())
    if problem is not None:
        raise common.CliError(f"the new checkpoint does not verify: {problem}")
    if args.out is not None:
        export.write_checkpoint(checkpoint, args.out)
    if args.json:
        common.emit(checkpoint.model_dump(mode="json"))
    else:
        print(checkpoint.model_dump_json(indent=2))
    return common.OK


def _keys(args: argparse.Namespace) -> int:
    keys = _log().keys()
    if args.json:
        common.emit([key.model_dump(mode="json") for key in keys])
        return common.OK
    for key in keys:
        retired = f" retired after entry {key.retired_after_seq}" if key.retired_at else ""
        print(f"{key.key_id} {key.owner} {key.public_key}{retired}")
    return common.OK
