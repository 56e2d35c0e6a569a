"""`vox-flow schedules`: list (with next fire times), pause, resume, trigger, reload.

A schedule file that does not load never hides the others: every command reports each bad
file (file, schedule, field, reason) on stderr, or under ``"errors"`` with ``--json``, and
goes on with the good ones. ``list`` then exits 1 (FAILED) after printing every good
schedule. ``reload`` checks the files first and refuses (exit 2, REFUSED: nothing reloaded)
while any is bad; ``reload --skip-bad`` asks the replicas all the same, which load the good
files and leave the bad ones out, and exits 1.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from vox_flow.cli import common

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from vox_flow.application import VoxFlow
    from vox_flow.schedules.loader import Loaded


MAX_NEXT = 1000  # fire times `schedules list --next` shows per schedule, at most


def register(sub: Any) -> None:
    """Add the `schedules` sub-command and its actions."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "schedules", help="inspect and operate schedules"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="each schedule with its next fire times")
    listing.add_argument(
        "--next", type=int, default=5, metavar="N",
        help=f"fire times to show (1-{MAX_NEXT}, default 5)",
    )  # fmt: skip
    listing.set_defaults(handler=_list)
    common.add_json(listing)
    for name, handler, text in (
        ("pause", _pause, "stop firing NAME until resumed (audited)"),
        ("resume", _resume, "fire NAME again from its next fire time (audited)"),
        ("trigger", _trigger, "fire NAME now, outside its cron (audited)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name", type=common.text)
        common.add_actor(action)
        common.add_json(action)
        action.set_defaults(handler=handler)
    reload = actions.add_parser("reload", help="make every replica reload the schedule files")
    reload.add_argument(
        "--skip-bad",
        action="store_true",
        help="reload even if some files do not load (each replica leaves those out)",
    )
    common.add_json(reload)
    reload.set_defaults(handler=_reload)


def _directory(*, required: bool = True) -> Path:
    """VOX_FLOW_SCHEDULES_DIR. ``required``: a missing directory fails the command (else it
    is only said)."""
    directory = common.settings().schedules_dir
    if not directory.is_dir():
        message = f"no schedules directory at {directory} (VOX_FLOW_SCHEDULES_DIR)"
        if required:
            raise common.CliError(message, code="not_found")
        common.note(f"warning: {message}")
    return directory


def _load(app: VoxFlow, *, required: bool = True) -> Loaded:
    """The schedule files of VOX_FLOW_SCHEDULES_DIR (bad files in ``errors``, not raised)."""
    from vox_flow.schedules.loader import load_dir

    return load_dir(app, _directory(required=required))


def _problems(loaded: Loaded) -> list[tuple[str, str]]:
    """(file, "schedule S, field F: reason") for every problem of every bad file."""
    return [
        (str(error.file), str(problem)) for error in loaded.errors for problem in error.problems
    ]


def _errors_json(loaded: Loaded) -> list[dict[str, str | None]]:
    return [
        {
            "file": str(error.file),
            "schedule": problem.schedule,
            "field": problem.field,
            "reason": problem.reason,
        }
        for error in loaded.errors
        for problem in error.problems
    ]


def _say_bad_files(loaded: Loaded) -> None:
    """The bad files, one problem a line, on stderr (after whatever stdout holds so far)."""
    if not loaded.errors:
        return
    sys.stdout.flush()
    count = len(loaded.errors)
    lines = [f"error: {count} schedule file(s) do not load; their schedules are left out:"]
    lines += [f"  {file}: {problem}" for file, problem in _problems(loaded)]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _list(args: argparse.Namespace) -> int:
    from vox_flow.schedules.operations import views

    if not 1 <= args.next <= MAX_NEXT:
        raise common.refused(f"--next must be between 1 and {MAX_NEXT}", "usage")
    _directory()  # before the app: a missing directory is said at once
    app = common.app(probe=False)  # definitions and fire times need no broker
    loaded = _load(app)
    try:
        common.probe_broker()
        rows = views(app, loaded, args.next)
    except Exception as exc:
        error = common.translate(exc)
        if error.code != "broker_unreachable":
            raise
        # Only the state (paused, last fire) is in the broker.
        common.note(f"warning: {error.message}; paused and last fire are not shown")
        rows = views(app, loaded, args.next, with_state=False)
    if args.json:
        document = {
            "v": 1,
            "data": [row.model_dump(mode="json") for row in rows],
            "errors": _errors_json(loaded),
        }
        print(json.dumps(document, indent=2))
    elif not rows and not loaded.errors:
        print(f"no schedules in {app.settings.schedules_dir}")
    else:
        for row in rows:
            flags = " (paused)" if row.paused else "" if row.enabled else " (disabled)"
            print(f"{row.name}{flags}: {row.cron} [{row.timezone}] -> {row.task}")
            for fire in row.next_fires:
                print(f"    {fire.isoformat()}")
    _say_bad_files(loaded)
    return common.FAILED if loaded.errors else common.OK


def _operate(args: argparse.Namespace, what: str) -> int:
    common.probe_broker()
    with common.auditor() as auditor:  # a store that cannot be opened fails before any change
        app = common.app()
        from vox_flow.actions import schedules as operations

        loaded = _load(app)
        _say_bad_files(loaded)
        actor = common.actor(args)
        if what == "trigger":
            entry, handle = operations.trigger(
                app, loaded, args.name, auditor=auditor, actor=actor, reason=args.reason
            )
            if args.json:
                common.emit({"name": args.name, "task_id": handle.id, "audit_seq": entry.seq})
            else:
                print(f"triggered {args.name}: task {handle.id} (audit entry {entry.seq})")
            return common.OK
        operate = operations.pause if what == "pause" else operations.resume
        entry = operate(app, loaded, args.name, auditor=auditor, actor=actor, reason=args.reason)
    if args.json:
        common.emit({"name": args.name, "paused": what == "pause", "audit_seq": entry.seq})
    else:
        print(f"{what}d {args.name} (audit entry {entry.seq})")
    return common.OK


def _pause(args: argparse.Namespace) -> int:
    return _operate(args, "pause")


def _resume(args: argparse.Namespace) -> int:
    return _operate(args, "resume")


def _trigger(args: argparse.Namespace) -> int:
    return _operate(args, "trigger")


def _reload(args: argparse.Namespace) -> int:
    from vox_flow.schedules.operations import BadScheduleFiles, reload

    app = common.app()
    # Every replica reads its own directory; this one's is checked (a bad file here is most
    # likely bad there too) and counted, for the message.
    loaded = _load(app, required=False)
    try:
        generation = reload(app, loaded, skip_bad=args.skip_bad)
    except BadScheduleFiles as exc:
        problems = _problems(loaded)
        detail = f": {problems[0][0]}: {problems[0][1]}" if len(problems) == 1 else ""
        raise common.CliError(
            f"{exc}{detail}; fix them, or pass --skip-bad to reload without them",
            code="bad_schedule_file",
            status=common.REFUSED,
            fields=problems,
        ) from None
    if args.json:
        document = {
            "v": 1,
            "data": {"generation": generation, "schedules_here": len(loaded.definitions)},
            "errors": _errors_json(loaded),
        }
        print(json.dumps(document, indent=2))
    else:
        print(
            f"asked every replica to reload (generation {generation}); "
            f"{len(loaded.definitions)} schedules load from here"
        )
    _say_bad_files(loaded)
    return common.FAILED if loaded.errors else common.OK
