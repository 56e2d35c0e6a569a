"""`vox-flow worker`: run this node's workers (a supervisor of per-core solo workers)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from vox_flow.cli import common

if TYPE_CHECKING:
    import argparse


def register(sub: Any) -> None:
    """Add the ``worker`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="run this node's workers: one Celery worker process per core, supervised",
        description="Run one `celery worker -P solo` per core under a supervisor that restarts "
        "crashed processes, enforces hard time limits and settles lost runs. Fails at once "
        "when the broker does not answer.",
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
    if args.processes is not None and args.processes < 1:
        raise common.refused("--processes must be at least 1", "usage")
    if args.queues is not None and not all(q.strip() for q in args.queues.split(",")):
        raise common.refused(f"--queues {args.queues!r}: empty queue name", "usage")
    app = common.app()
    if common.broker_from_dev():
        # The worker processes are `celery -A vox_flow.app worker` children, which read their
        # broker from the environment they inherit: name vox-flow dev's broker there too.
        os.environ["VOX_FLOW_BROKER_URL"] = common.broker_url()
    from vox_flow.worker.supervisor import Supervisor  # billiard, the worker side

    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s %(name)s] %(message)s")
    supervisor = Supervisor(
        app,
        processes=args.processes or app.settings.worker_processes,
        app_path=args.app,
        queues=args.queues,
        loglevel=args.loglevel,
    )
    return supervisor.run()
