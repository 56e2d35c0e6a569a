"""`vox-flow control` as a real process: op-log from a real worker's events, outbox resumed at
start, periodic checkpoints, clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration import tasks
from tests.integration.conftest import StartWorker
from tests.integration.workers import ROOT, worker_env
from vox_flow.actions.perform import Auditor, EffectFailed, Effects, pending, perform
from vox_flow.actions.schedules import PAUSE
from vox_flow.app import app
from vox_flow.audit.keys import CONTROL_KEY
from vox_flow.audit.log import AuditLog
from vox_flow.broker.server import RedisServer
from vox_flow.config import Settings
from vox_flow.contracts.audit import AuditEntry
from vox_flow.contracts.oplog import Op, OpEvent, OpKind
from vox_flow.errors import TaskFailed
from vox_flow.oplog.log import OpLog
from vox_flow.schedules.store import ScheduleStore
from vox_flow.store import open_store
from vox_flow.submit import submit

pytestmark = pytest.mark.integration


def _until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


StartControl = Callable[[], subprocess.Popen[bytes]]


@pytest.fixture
def start_control(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[StartControl]:
    """Start `vox-flow control` in its own session; SIGKILLed after the test if still running."""
    log_path = tmp_path / "control.log"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        env = worker_env(redis_url, data_dir, control_checkpoint_seconds="0.5")
        with log_path.open("wb") as log:
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "vox_flow.cli", "control"],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    if started:
        print(log_path.read_text(errors="replace")[-3000:])  # shown when the test fails


def _crash_after_entry(settings: Settings) -> AuditEntry:
    """Pause a schedule whose outside effect fails: the entry is kept, its effect pending."""
    auditor = Auditor.open(settings)
    crashing = Effects()

    @crashing.outside(PAUSE)
    def _crash(entry: AuditEntry) -> None:
        raise ConnectionError("simulated crash before the effect")

    try:
        with pytest.raises(EffectFailed) as failed:
            perform(auditor.store, auditor.signer, crashing, actor="ann", action=PAUSE,
                    target="nightly", reason="maintenance")  # fmt: skip
        assert pending(auditor.store) == [failed.value.entry.seq]
    finally:
        auditor.store.dispose()
    return failed.value.entry


def test_control_service_records_ops_resumes_outbox_and_checkpoints(
    redis_url: str,
    data_dir: Path,
    start_worker: StartWorker,
    start_control: StartControl,
) -> None:
    settings = Settings(broker_url=redis_url, data_dir=data_dir)
    schedules = ScheduleStore(app.redis)
    entry = _crash_after_entry(settings)  # before the service starts, as after a crash
    assert not schedules.state("nightly").paused
    control = start_control()

    auditor = Auditor.open(settings)
    store, oplog = auditor.store, OpLog(auditor.store)
    try:

        def ops() -> list[Op]:
            return list(oplog.ops())

        worker = start_worker("w1")
        # A node op means the service's subscription is live, and it keeps that one for as
        # long as the broker connection lasts: nothing sent after it is lost.
        _until(lambda: any(op.kind == OpKind.NODE for op in ops()), "the node to join")
        assert control.poll() is None
        # Resume runs before ingest starts, so the crashed effect is finished by now.
        assert pending(store) == []
        assert schedules.state("nightly").paused

        echoes = [submit(tasks.echo, {"id": f"e{i}", "value": i}) for i in range(2)]
        broken = submit(tasks.broken, {"id": "b1", "value": 1})  # non-retryable: dead letter
        assert [h.result(timeout=30).value for h in echoes] == [0, 1]
        with pytest.raises(TaskFailed):
            broken.result(timeout=30)
        ids = [h.id for h in echoes]
        want = {(i, OpEvent.SUCCEEDED) for i in ids} | {(broken.id, OpEvent.DEAD_LETTERED)}
        _until(lambda: want <= {(op.subject, op.event) for op in ops()}, "the task ops")

        worker.stop()  # warm shutdown: the worker says it goes offline
        _until(lambda: any(op.event == OpEvent.LEFT for op in ops()), "the node to leave")

        control.send_signal(signal.SIGTERM)
        assert control.wait(20) == 0

        recorded = ops()
        for task_id in ids:
            assert [op.event for op in recorded if op.subject == task_id] == [
                OpEvent.SUBMITTED, OpEvent.RECEIVED, OpEvent.STARTED, OpEvent.SUCCEEDED,
            ]  # fmt: skip
        failed = [op for op in recorded if op.subject == broken.id]
        assert [op.event for op in failed] == [
            OpEvent.SUBMITTED, OpEvent.RECEIVED, OpEvent.STARTED, OpEvent.DEAD_LETTERED,
        ]  # fmt: skip
        assert failed[-1].data["exception"].startswith("DeadLettered(")
        assert failed[0].data["name"] == tasks.broken.name
        nodes = [op for op in recorded if op.kind == OpKind.NODE]
        assert [op.event for op in nodes] == [OpEvent.JOINED, OpEvent.LEFT]
        assert nodes[0].subject.startswith("w1@")

        joined = oplog.state_at(nodes[0].time)
        assert [(n.node_id, n.status) for n in joined.nodes] == [(nodes[0].subject, "online")]
        now = oplog.state_at(datetime.now(UTC))
        assert now.tasks == []
        assert now.finished == {"succeeded": 2, "dead_lettered": 1}
        assert [(n.node_id, n.status) for n in now.nodes] == [(nodes[0].subject, "offline")]

        log = AuditLog(store)
        keys = log.keys()
        control_key = next(k.key_id for k in keys if k.owner == CONTROL_KEY)
        assert [(c.size, c.key_id) for c in log.checkpoints()] == [(entry.seq, control_key)]
    finally:
        store.dispose()


def test_control_service_subscribes_again_after_the_broker_restarts(
    redis_server: RedisServer,
    redis_url: str,
    data_dir: Path,
    tmp_path: Path,
    start_control: StartControl,
) -> None:
    store = open_store(Settings(broker_url=redis_url, data_dir=data_dir))  # migrated here
    oplog = OpLog(store)
    control = start_control()
    log_path = tmp_path / "control.log"

    def running() -> bool:
        assert control.poll() is None, "the control service exited"
        return True

    def joined(node: str) -> bool:
        # Sent until it arrives: the service may not be subscribed (again) yet.
        with app.events.default_dispatcher(hostname=node) as dispatcher:
            dispatcher.send("worker-heartbeat", retry=True)
        return running() and any(op.subject == node for op in oplog.ops())

    def losses() -> int:
        return log_path.read_text(errors="replace").count("broker connection lost")

    try:
        _until(lambda: joined("n1@test"), "the first node to join")
        redis_server.stop()
        try:
            # The subscription breaks, then a reconnect fails: the service must keep trying.
            _until(lambda: running() and losses() >= 2, "a failed reconnect")
        finally:
            redis_server.start()
        _until(lambda: joined("n2@test"), "the second node to join, after the restart")
        control.send_signal(signal.SIGTERM)
        assert control.wait(20) == 0
        nodes = [(op.subject, op.event) for op in oplog.ops() if op.kind == OpKind.NODE]
        assert nodes == [("n1@test", OpEvent.JOINED), ("n2@test", OpEvent.JOINED)]
    finally:
        store.dispose()
