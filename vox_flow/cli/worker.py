"""`vox-flow worker`: run this node's workers (a supervisor of per-core solo workers)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def register(sub: Any) -> None:
    """Add the ``worker`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="run this node's workers: one Celery worker process per core, supervised",
        description="Run one `celery worker -P solo` per core under a supervisor that restarts "
        "crashed processes, enforces hard time limits and settles lost runs.",
    )
    parser.add_argument(
        "-p", "--processes", type=int, default=None,
        help="worker processes (default: VOX_FLOW_WORKER_PROCESSES, one per core)",
    )  # fmt: skip
    parser.add_argument("-Q", "--queues", default=None, help="comma-separated queues to consume")
    parser.add_argument("-A", "--app", default="vox_flow.app", help="the Celery app module")
    parser.add_argument("-l", "--loglevel", default="info", help="log level of the workers")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vox_flow.app import app
    from vox_flow.worker.supervisor import Supervisor

    processes = args.processes or app.settings.worker_processes
    if processes < 1:
        raise SystemExit("vox-flow worker: --processes must be at least 1")
    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s %(name)s] %(message)s")
    supervisor = Supervisor(
        app, processes=processes, app_path=args.app, queues=args.queues, loglevel=args.loglevel
    )
    return supervisor.run()
