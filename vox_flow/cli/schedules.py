"""`vox-flow schedules`: list (with next fire times), pause, resume, trigger, reload."""

from __future__ import annotations

import getpass
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from vox_flow.application import VoxFlow
    from vox_flow.schedules.loader import Loaded


def register(sub: Any) -> None:
    """Add the `schedules` sub-command and its actions."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "schedules", help="inspect and operate schedules"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="each schedule with its next fire times")
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")
    listing.add_argument("--next", type=int, default=5, metavar="N", help="fire times to show")
    listing.set_defaults(handler=_list)
    for name, handler, text in (
        ("pause", _pause, "stop firing NAME until resumed (audited)"),
        ("resume", _resume, "fire NAME again from its next fire time (audited)"),
        ("trigger", _trigger, "fire NAME now, outside its cron (audited)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("name")
        action.add_argument("--reason", default="", help="why (kept in the audit entry)")
        action.add_argument("--actor", default=None, help="who (default: the login name)")
        action.set_defaults(handler=handler)
    actions.add_parser("reload", help="make every replica reload the schedule files").set_defaults(
        handler=_reload
    )


def _load() -> tuple[VoxFlow, Loaded]:
    from vox_flow.app import app
    from vox_flow.schedules.loader import load_dir

    loaded = load_dir(app, app.settings.schedules_dir)
    for error in loaded.errors:
        print(f"error: {error}", file=sys.stderr)
    return app, loaded


def _list(args: argparse.Namespace) -> int:
    import redis

    from vox_flow.schedules.operations import views

    app, loaded = _load()
    try:
        rows = views(app, loaded, args.next)
    except redis.ConnectionError as exc:
        # Definitions and fire times need no broker; only paused / last fire do.
        print(f"warning: broker unreachable, state not shown: {exc}", file=sys.stderr)
        rows = views(app, loaded, args.next, with_state=False)
    if args.json:
        document = {
            "v": 1,
            "data": [row.model_dump(mode="json") for row in rows],
            "errors": [str(error) for error in loaded.errors],
        }
        print(json.dumps(document, indent=2))
    else:
        for row in rows:
            flags = " (paused)" if row.paused else "" if row.enabled else " (disabled)"
            print(f"{row.name}{flags}: {row.cron} [{row.timezone}] -> {row.task}")
            for fire in row.next_fires:
                print(f"    {fire.isoformat()}")
    return 1 if loaded.errors else 0


def _operate(args: argparse.Namespace, what: str) -> int:
    from vox_flow.actions import schedules as operations
    from vox_flow.actions.perform import Auditor
    from vox_flow.schedules.operations import UnknownSchedule

    app, loaded = _load()
    actor = args.actor or getpass.getuser()
    auditor = Auditor.open(app.settings)
    try:
        if what == "trigger":
            entry, handle = operations.trigger(
                app, loaded, args.name, auditor=auditor, actor=actor, reason=args.reason
            )
            print(f"triggered {args.name}: task {handle.id} (audit entry {entry.seq})")
            return 0
        operate = operations.pause if what == "pause" else operations.resume
        entry = operate(app, loaded, args.name, auditor=auditor, actor=actor, reason=args.reason)
    except UnknownSchedule as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        auditor.store.dispose()
    print(f"{what}d {args.name} (audit entry {entry.seq})")
    return 0


def _pause(args: argparse.Namespace) -> int:
    return _operate(args, "pause")


def _resume(args: argparse.Namespace) -> int:
    return _operate(args, "resume")


def _trigger(args: argparse.Namespace) -> int:
    return _operate(args, "trigger")


def _reload(args: argparse.Namespace) -> int:
    from vox_flow.schedules.operations import reload

    app, loaded = _load()
    generation = reload(app)
    print(
        f"asked every replica to reload (generation {generation}); {len(loaded.definitions)} "
        "schedules load from here"
    )
    return 1 if loaded.errors else 0
