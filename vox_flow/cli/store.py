"""`vox-flow store`: migrate and prune the control store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vox_flow.config import load_settings
from vox_flow.store import open_store
from vox_flow.store.retention import prune

if TYPE_CHECKING:
    import argparse


def register(sub: Any) -> None:
    """Add the `store` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser("store", help="the control store")
    commands = parser.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    migrate = commands.add_parser("migrate", help="bring the schema to the latest migration")
    migrate.set_defaults(handler=_migrate)
    pruner = commands.add_parser("prune", help="apply every table's retention rule")
    pruner.set_defaults(handler=_prune)


def _prune_dead_letters(days: int) -> int:
    """Dead letters live in the broker, not the store; their rule is applied here too."""
    from vox_flow.app import app
    from vox_flow.deadletters.store import DeadLetterStore

    cutoff = datetime.now(UTC) - timedelta(days=days)
    return DeadLetterStore(app.redis).prune(cutoff)


def _migrate(args: argparse.Namespace) -> int:
    store = open_store(load_settings())  # migrates on open
    print(f"store at {store.engine.url.render_as_string(hide_password=True)} is up to date")
    return 0


def _prune(args: argparse.Namespace) -> int:
    settings = load_settings()
    pruned = prune(open_store(settings), settings)
    letters = _prune_dead_letters(settings.dead_letter_ttl_days)
    print(
        f"pruned: {pruned.audit_entries} audit entries, {pruned.audit_outbox} outbox rows, "
        f"{pruned.ops} ops, {pruned.op_snapshots} op snapshots, {letters} dead letters"
    )
    return 0
