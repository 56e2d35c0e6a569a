"""`vox-flow store`: migrate and prune the control store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vox_flow.cli import common

if TYPE_CHECKING:
    import argparse

    from vox_flow.application import VoxFlow


def register(sub: Any) -> None:
    """Add the `store` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser("store", help="the control store")
    commands = parser.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    migrate = commands.add_parser(
        "migrate", help="bring the schema to the latest migration (creating the store if none)"
    )
    common.add_json(migrate)
    migrate.set_defaults(handler=_migrate)
    pruner = commands.add_parser(
        "prune", help="apply every table's retention rule, and dead letters' (in the broker)"
    )
    pruner.add_argument(
        "--dry-run", action="store_true", help="count what would be pruned; delete nothing"
    )
    common.add_json(pruner)
    pruner.set_defaults(handler=_prune)


def _migrate(args: argparse.Namespace) -> int:
    store = common.open_store(create=True)  # migrates on open
    url = common.hide_password(store.url)
    store.dispose()
    if args.json:
        common.emit({"url": url, "up_to_date": True})
    else:
        print(f"store at {url} is up to date")
    return common.OK


def _dead_letters(app: VoxFlow, days: int, *, dry_run: bool) -> int:
    """Dead letters live in the broker, not the store; their rule is applied here too."""
    from vox_flow.deadletters.store import DeadLetterStore  # not for --help

    cutoff = datetime.now(UTC) - timedelta(days=days)
    return DeadLetterStore(app.redis).prune(cutoff, dry_run=dry_run)


def _prune(args: argparse.Namespace) -> int:
    settings = common.settings()
    common.probe_broker()
    store = common.open_store(create=False)
    from vox_flow.store.retention import prune

    try:
        app = common.app()
        pruned = prune(store, settings, dry_run=args.dry_run)
        letters = _dead_letters(app, settings.dead_letter_ttl_days, dry_run=args.dry_run)
    finally:
        store.dispose()
    counts = {
        "audit_entries": pruned.audit_entries,
        "audit_outbox": pruned.audit_outbox,
        "ops": pruned.ops,
        "op_snapshots": pruned.op_snapshots,
        "dead_letters": letters,
    }
    if args.json:
        common.emit({"dry_run": args.dry_run, **counts})
        return common.OK
    verb = "would prune" if args.dry_run else "pruned"
    print(
        f"{verb}: {pruned.audit_entries} audit entries, {pruned.audit_outbox} outbox rows, "
        f"{pruned.ops} ops, {pruned.op_snapshots} op snapshots, {letters} dead letters"
    )
    return common.OK
