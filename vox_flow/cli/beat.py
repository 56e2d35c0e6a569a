"""`vox-flow beat`: run one scheduler replica (any number may run; one leads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

SCHEDULER = "vox_flow.schedules.scheduler:VoxScheduler"


def register(sub: Any) -> None:
    """Add the `beat` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "beat", help="run a schedule replica (celery beat with the vox_flow scheduler)"
    )
    parser.add_argument("-l", "--loglevel", default="info", help="log level (default: info)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vox_flow.app import app

    # The same as `celery -A vox_flow.app beat -S vox_flow.schedules.scheduler:VoxScheduler`.
    app.Beat(scheduler=SCHEDULER, loglevel=args.loglevel, quiet=True).run()
    return 0
