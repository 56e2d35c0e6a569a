"""Control-service replicas with a real worker: one leads, every task's ops are recorded once;
a SIGKILLed leader is replaced once its lock runs out, a SIGTERMed one at once, and what runs
after a takeover is recorded once too. A leader stalled past its TTL writes nothing when it
wakes; one that never notices its lock is gone is stopped by the store's fence."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration import tasks
from tests.integration.conftest import StartWorker
from tests.integration.workers import ROOT, worker_env
from vox_flow.app import app, create_app
from vox_flow.config import Settings
from vox_flow.contracts.oplog import OpEvent, OpKind
from vox_flow.control.service import (
    FENCE_KEY,
    LOCK_KEY,
    STANDBY_POLLS_PER_TTL,
    ControlService,
)
from vox_flow.leader import LeaderLock
from vox_flow.oplog.ingest import FLUSH_SECONDS
from vox_flow.oplog.log import OpLog
from vox_flow.store import Store, open_store
from vox_flow.submit import TaskHandle, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL = 3.0
POLL = TTL / STANDBY_POLLS_PER_TTL  # how often a standby tries the lock
WATCH = 0.02  # how often this test looks at the lock
# A replica or this process waiting for a core (two shared cores, a worker and three
# replicas busy): the allowance the schedule replica test found enough, for the same work.
CPU = 0.35
FULL_RUN = [OpEvent.SUBMITTED, OpEvent.RECEIVED, OpEvent.STARTED, OpEvent.SUCCEEDED]


def _until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Replicas:
    """`vox-flow control` processes, each in its own session with its own log."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.started: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> subprocess.Popen[bytes]:
        with (self.logs / f"control{len(self.started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "vox_flow.cli", "control"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[process.pid] = process
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        index = list(self.started).index(process.pid)
        return (self.logs / f"control{index}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def replicas(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Replicas]:
    env = worker_env(redis_url, data_dir, control_leader_ttl_seconds=str(TTL))
    started = Replicas(env, tmp_path)
    yield started
    started.kill_all()
    for index in range(len(started.started)):  # shown when the test fails
        print(f"--- control{index}.log\n", (tmp_path / f"control{index}.log").read_text()[-3000:])


def leader_pid(client: redis.Redis) -> int | None:
    value = client.get(LOCK_KEY)
    return int(value.decode().split()[0].split(":")[1]) if value else None


def new_leader(client: redis.Redis, old: int | None, within: float) -> tuple[int, float]:
    """The pid of the first leader other than ``old``, and when this test first saw it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = leader_pid(client)
        if pid is not None and pid != old:
            return pid, time.monotonic()
        time.sleep(WATCH)
    raise AssertionError(f"no new leader within {within} s")


def task_events(oplog: OpLog) -> dict[str, list[OpEvent]]:
    """Every task's recorded events, in op-log order."""
    by_task: dict[str, list[OpEvent]] = {}
    for op in oplog.ops():
        if op.kind == OpKind.TASK:
            by_task.setdefault(op.subject, []).append(op.event)
    return by_task


def listening(oplog: OpLog, probe: str) -> None:
    """Wait until the leader records events: a heartbeat from a new node, sent until its
    joined op is in the op-log (what is sent after that is recorded unless the leader dies)."""

    def joined() -> bool:
        with app.events.default_dispatcher(hostname=probe) as dispatcher:
            dispatcher.send("worker-heartbeat", retry=True)
        return any(op.subject == probe for op in oplog.ops())

    _until(joined, f"{probe} to be recorded")


def run_tasks(oplog: OpLog, prefix: str, count: int = 6) -> list[str]:
    """Run ``count`` tasks to the end, and wait until their last op is recorded."""
    handles = [submit(tasks.echo, {"id": f"{prefix}{i}", "value": i}) for i in range(count)]
    assert [h.result(timeout=30).value for h in handles] == list(range(count))
    ids = {h.id for h in handles}

    def recorded() -> bool:
        return ids <= {o.subject for o in oplog.ops() if o.event == OpEvent.SUCCEEDED}

    _until(recorded, f"the ops of the {prefix} tasks")
    return [h.id for h in handles]


def node_joins(oplog: OpLog) -> Counter[str]:
    """How many times each node was joined."""
    return Counter(op.subject for op in oplog.ops() if op.event == OpEvent.JOINED)


def fences(store: Store, client: redis.Redis) -> tuple[int, int]:
    """The op-log head's fence and the last token Redis issued."""
    with store.read() as conn:
        fence = conn.exec_driver_sql("SELECT fence FROM op_head").scalar_one()
    return fence, int(client.get(FENCE_KEY) or 0)


class Submitter:
    """Submits echo tasks one after another in a thread, across a takeover."""

    def __init__(self) -> None:
        self.handles: list[TaskHandle[Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            n = len(self.handles)
            self.handles.append(submit(tasks.echo, {"id": f"gap{n}", "value": n}))

    def stop(self) -> list[TaskHandle[Any]]:
        self._stop.set()
        self._thread.join(10)
        return self.handles


def test_replicas_record_every_op_once_across_a_kill_and_a_handover(
    redis_url: str, data_dir: Path, start_worker: StartWorker, replicas: Replicas
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = open_store(Settings(broker_url=redis_url, data_dir=data_dir))  # migrated here
    oplog = OpLog(store)
    try:
        worker = start_worker("w1")
        first, second = replicas.start(), replicas.start()
        leader, _ = new_leader(client, None, 30)
        standby = second if leader == first.pid else first
        _until(lambda: "standing by" in replicas.log(standby), "the other replica to stand by")
        listening(oplog, "probe1@test")
        counted = run_tasks(oplog, "before")

        # SIGKILL the leader while tasks keep coming: its lock lives on until its TTL.
        gap = Submitter()
        time.sleep(1)
        os.killpg(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        left = client.pttl(LOCK_KEY) / 1000
        expires_at = time.monotonic() + left
        assert left > 0
        replicas.started[leader].wait(10)
        successor, seen = new_leader(client, leader, TTL + 5)
        assert successor == standby.pid
        # The standby takes the lock at its first poll after the lock expired; this test sees
        # it at its next look; the rest is waiting for a core.
        assert seen <= expires_at + POLL + WATCH + CPU, (seen - killed_at, left)
        listening(oplog, "probe2@test")
        time.sleep(1)
        gap_ids = [h.id for h in gap.stop()]
        counted += run_tasks(oplog, "after_kill")

        # A third replica stands by; SIGTERM the leader: it releases the lock on its way out.
        third = replicas.start()
        _until(lambda: "standing by" in replicas.log(third), "the third replica to stand by")
        standby.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        handed, seen = new_leader(client, standby.pid, TTL)
        assert handed == third.pid
        # Its ingest loop ends at its next flush, then it releases; the third replica takes
        # the lock at its next poll: no TTL to wait out.
        assert seen - stopped_at <= FLUSH_SECONDS + POLL + WATCH + CPU, seen - stopped_at
        assert standby.wait(20) == 0
        listening(oplog, "probe3@test")
        counted += run_tasks(oplog, "after_handover")

        by_task = task_events(oplog)
        for task_id in counted:
            assert by_task[task_id] == FULL_RUN, task_id
        # Tasks that ran across the kill: an event sent while no leader listened is missing,
        # none is there twice.
        for task_id in gap_ids:
            events = by_task.get(task_id, [])
            assert events == [e for e in FULL_RUN if e in events], (task_id, events)
        # Each new leader knew the nodes from the op-log: none was joined a second time.
        joins = node_joins(oplog)
        assert set(joins.values()) == {1}, joins
        assert any(node.startswith(f"{worker.name}@") for node in joins), joins
        assert fences(store, client) == (3, 3)
    finally:
        store.dispose()
        client.close()


def test_a_leader_paused_past_its_ttl_writes_nothing_when_it_wakes_and_stands_by(
    redis_url: str, data_dir: Path, start_worker: StartWorker, replicas: Replicas
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = open_store(Settings(broker_url=redis_url, data_dir=data_dir))
    oplog = OpLog(store)
    try:
        start_worker("w1")
        first, second = replicas.start(), replicas.start()
        leader, _ = new_leader(client, None, 30)
        paused = first if leader == first.pid else second
        other = second if paused is first else first
        _until(lambda: "standing by" in replicas.log(other), "the other replica to stand by")
        listening(oplog, "probe1@test")
        counted = run_tasks(oplog, "before")
        # Paused while idle (nothing to write), so it holds no store lock while stopped.
        os.killpg(paused.pid, signal.SIGSTOP)
        try:
            successor, _ = new_leader(client, paused.pid, TTL + 5)
            assert successor == other.pid
            listening(oplog, "probe2@test")
            # Their events also reach the paused replica's subscription, read when it wakes.
            counted += run_tasks(oplog, "during_pause")
        finally:
            os.killpg(paused.pid, signal.SIGCONT)

        # Awake, it finds its lock lost at its next flush, or has its write refused if it read
        # the events first; either way it writes nothing (checked below) and stands by.
        _until(lambda: "stopped leading (token 1)" in replicas.log(paused), "it to stand down")
        assert paused.poll() is None and leader_pid(client) == other.pid

        # It can lead again, with a newer token, once the leader stops.
        other.send_signal(signal.SIGTERM)
        assert other.wait(20) == 0
        assert new_leader(client, other.pid, TTL)[0] == paused.pid
        listening(oplog, "probe3@test")
        counted += run_tasks(oplog, "after")

        by_task = task_events(oplog)
        for task_id in counted:
            assert by_task[task_id] == FULL_RUN, task_id
        joins = node_joins(oplog)
        assert set(joins.values()) == {1}, joins
        assert fences(store, client) == (3, 3)
    finally:
        store.dispose()
        client.close()


class BlindLock(LeaderLock):
    """A leader that never notices it lost the lock (a clock that stalled with the process):
    only the store's fence stands between it and the op-log."""

    def keep(self) -> bool:
        return self.token is not None

    def leading(self) -> bool:
        return self.token is not None


def test_a_leader_blind_to_losing_its_lock_cannot_write_once_a_newer_one_claims_the_log(
    redis_url: str, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(broker_url=redis_url, data_dir=data_dir, control_leader_ttl_seconds=TTL)
    blind_app = create_app(settings)
    client = redis.Redis.from_url(redis_url)
    store = open_store(settings)
    oplog = OpLog(store)
    lock = BlindLock(blind_app.redis, TTL, lock_key=LOCK_KEY, fence_key=FENCE_KEY)
    service = ControlService(blind_app, lock=lock)
    thread = threading.Thread(target=service.run)
    caplog.set_level(logging.INFO, logger="vox_flow.control.service")

    def logged(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    try:
        thread.start()
        listening(oplog, "probe1@test")
        # Its lock runs out (it never renews); a newer leader takes it and claims the op-log,
        # holding the lock long enough for this test to look.
        _until(lambda: not client.exists(LOCK_KEY), "the blind leader's lock to run out", TTL)
        newer = LeaderLock(client, 60, lock_key=LOCK_KEY, fence_key=FENCE_KEY)
        assert newer.try_acquire() == 2
        oplog.fence(2)
        head = oplog.latest_state().op_seq

        def refused() -> bool:
            with blind_app.events.default_dispatcher(hostname="probe2@test") as dispatcher:
                dispatcher.send("worker-heartbeat", retry=True)
            return logged("op-log write refused: fencing token 1 is older than 2")

        _until(refused, "the blind leader's write to be refused")
        _until(lambda: logged("stopped leading (token 1)"), "it to stand down")
        assert oplog.latest_state().op_seq == head  # its refused write left nothing
        assert thread.is_alive()

        newer.release()  # it leads again at its next poll, with a newer token
        listening(oplog, "probe2@test")
        assert logged("leading the control service with fencing token 3")
        assert node_joins(oplog) == {"probe1@test": 1, "probe2@test": 1}
        service.stop.set()
        thread.join(20)
        assert not thread.is_alive()
        assert fences(store, client) == (3, 3)
    finally:
        service.stop.set()
        thread.join(20)
        store.dispose()
        client.close()


def test_a_leader_whose_token_redis_forgot_raises_the_counter_and_leads_again(
    redis_url: str, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store saw token 8; Redis lost its data (the fixture starts it empty): its counter
    # would hand out 1, 2, ... and every new leader would be refused for good.
    settings = Settings(broker_url=redis_url, data_dir=data_dir, control_leader_ttl_seconds=TTL)
    client = redis.Redis.from_url(redis_url)
    store = open_store(settings)
    oplog = OpLog(store)
    oplog.fence(8)
    service = ControlService(create_app(settings))
    thread = threading.Thread(target=service.run)
    caplog.set_level(logging.INFO, logger="vox_flow.control.service")
    try:
        thread.start()
        listening(oplog, "probe1@test")
        messages = [record.getMessage() for record in caplog.records]
        assert any("fencing token 1 is older than 8" in m for m in messages), messages
        assert any("leading the control service with fencing token 9" in m for m in messages)
        assert fences(store, client) == (9, 9)
    finally:
        service.stop.set()
        thread.join(20)
        store.dispose()
        client.close()
