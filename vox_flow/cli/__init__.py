"""The ``vox-flow`` command: one sub-command module per area, each with ``register``.

``vox-flow --help`` loads every command module, so each imports only the standard library at
its top; what a command needs (settings, Celery, SQLAlchemy, Redis) loads in its handler.
Failures are reported by ``common.run``: one line, an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vox_flow import __version__
from vox_flow.cli import audit, beat, common, control, dev, dlq, schedules, store, worker

if TYPE_CHECKING:
    from collections.abc import Sequence

_COMMANDS = (worker, dev, dlq, beat, schedules, control, audit, store)

_EXIT_CODES = """\
exit codes: 0 done; 1 failed (not found, unreachable, verification failed); 2 refused
(invalid input or no confirmation; nothing changed); 3 the audit entry is recorded but its
effect is pending (`vox-flow control` finishes it); 130 interrupted; 141 stdout closed.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every sub-command registered)."""
    parser = common.Parser(
        prog="vox-flow",
        description="vox_flow: typed Celery workflows with durable retries.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vox-flow {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="let an unexpected error end in its traceback instead of one line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``vox-flow`` command; returns the process exit code."""
    return common.run(build_parser(), sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
