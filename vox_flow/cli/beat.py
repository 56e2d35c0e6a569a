"""`vox-flow beat`: run one scheduler replica (any number may run; one leads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vox_flow.cli import common

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
    app = common.app()
    directory = app.settings.schedules_dir
    if not directory.is_dir():
        common.note(
            f"warning: no schedules directory at {directory} (VOX_FLOW_SCHEDULES_DIR): "
            "nothing fires until it exists and `vox-flow schedules reload` is run"
        )
    # The same as `celery -A vox_flow.app beat -S vox_flow.schedules.scheduler:VoxScheduler`.
    app.Beat(scheduler=SCHEDULER, loglevel=args.loglevel, quiet=True).run()
    return 0
