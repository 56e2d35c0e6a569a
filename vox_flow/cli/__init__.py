"""The ``vox-flow`` command: one sub-command module per area, each with ``register``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vox_flow.cli import audit, beat, control, dev, dlq, schedules, store, worker

if TYPE_CHECKING:
    from collections.abc import Sequence

_COMMANDS = (worker, dev, dlq, beat, schedules, control, audit, store)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every sub-command registered)."""
    parser = argparse.ArgumentParser(
        prog="vox-flow", description="vox_flow: typed Celery workflows with durable retries."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``vox-flow`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
