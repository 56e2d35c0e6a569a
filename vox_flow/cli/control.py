"""`vox-flow control`: run the control service (op-log from Celery events, audit outbox,
periodic signed checkpoints) until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any

from vox_flow.cli import common

if TYPE_CHECKING:
    import argparse
    from types import FrameType


def register(sub: Any) -> None:
    """Add the `control` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "control",
        help="run the control service (one replica leads, others stand by): op-log from "
        "Celery events, audit outbox, checkpoints",
        description="Open the control store, finish audited effects a crash left pending, then "
        "record every task and node state change in the op-log and sign a checkpoint of the "
        "audit log every VOX_FLOW_CONTROL_CHECKPOINT_SECONDS, until SIGTERM or SIGINT. Fails "
        "at once when the store cannot be opened or the broker does not answer; a broker lost "
        "later is waited for.",
    )
    parser.add_argument("-l", "--loglevel", default="info", help="log level (default: info)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    common.probe_broker()
    store = common.open_store(create=True)
    app = common.app()
    from vox_flow import telemetry  # OpenTelemetry: not for --help
    from vox_flow.control.service import ControlService  # SQLAlchemy, PyNaCl

    telemetry.init(app.settings)  # an entry point: the one place this process starts it
    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s %(name)s] %(message)s")
    service = ControlService(app, store=store)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s: stopping", signal.Signals(signum).name)
        service.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return service.run()
