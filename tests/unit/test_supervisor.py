"""The supervisor's loop without a broker: names, run-slot directories, and a dead child's
leftovers kept while the broker does not answer (its app names a port nothing listens on)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vox_flow._celery.layout import RedisLayout, _layouts
from vox_flow.app import create_app
from vox_flow.config import Settings
from vox_flow.worker.runslot import Run
from vox_flow.worker.supervisor import DIR_PREFIX, Supervisor, remove_stale_dirs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _supervisor(processes: int = 1) -> Supervisor:
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", node_id="box"))
    # As read at start while the broker answered (Supervisor.run): kombu's default names.
    _layouts[app] = RedisLayout("", "unacked", "unacked_index", "\x06\x16", (0, 3, 6, 9))
    supervisor = Supervisor(app, processes=processes)
    for child in supervisor.children:
        child.args = SLEEPER  # stands in for `celery worker`: nothing here needs a broker
    return supervisor


def test_children_are_named_after_their_supervisor_and_keep_their_names() -> None:
    supervisor = _supervisor(processes=2)
    try:
        pid = os.getpid()
        assert [c.name for c in supervisor.children] == [f"vf1-{pid}@box", f"vf2-{pid}@box"]
        assert f"{DIR_PREFIX}{pid}-" in str(supervisor.children[0].slot.path)
    finally:
        supervisor._shutdown()


def test_stale_run_slot_directories_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    stale = tmp_path / f"{DIR_PREFIX}{_dead_pid()}-abc"
    live = tmp_path / f"{DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{DIR_PREFIX}old-format"
    for path in (stale, live, other):
        path.mkdir()
        (path / "0.slot").write_bytes(b"\0")
    assert remove_stale_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_a_dead_child_s_run_waits_for_the_broker_and_nothing_stops_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = _supervisor()
    child = supervisor.children[0]
    directory = child.slot.path.parent
    supervisor.turn()  # starts the child
    assert child.process is not None
    child.slot.write(Run("task-1", "tag-1", "charge", time.time(), 60.0, ["tag-1", "tag-2"]))
    child.process.kill()
    child.process.wait()
    with caplog.at_level(logging.WARNING, logger="vox_flow.worker.supervisor"):
        supervisor.turn()  # settling meets ConnectionError: kept, not raised
        deadline = time.monotonic() + 5
        while child.process is None and time.monotonic() < deadline:
            supervisor.turn()  # restarted after its fast-death pause, settled or not
            time.sleep(0.05)
        restarted = child.process
    assert [(u.tag, u.run is not None) for u in supervisor.unsettled] == [
        ("tag-1", True),
        ("tag-2", False),
    ]
    assert supervisor.unsettled[0].error_type == "WorkerLostError"
    assert "killed by SIGKILL" in supervisor.unsettled[0].error_message
    assert restarted is not None and restarted.poll() is None
    waits = [r.getMessage() for r in caplog.records if "wait to be settled" in r.getMessage()]
    assert len(waits) == 1, waits  # once per few seconds, not once per try
    assert "2 message(s)" in waits[0] and "ConnectionError" in waits[0]
    supervisor._shutdown()  # the broker is still away: logged, not raised
    assert len(supervisor.unsettled) == 2
    assert "unsettled" in caplog.text
    assert not directory.exists()
