"""Three scheduler replicas and a worker: kill the leader twice, every fire runs exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from tests.helpers import fire_time, wait_for
from tests.integration.conftest import StartWorker
from tests.integration.workers import ROOT, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = "tests.integration.schedule_tasks"
TTL = 3.0
TICK = 0.1
SCHEDULE = """
[[schedule]]
name = "every-second"
cron = "* * * * * *"
task = "tests.schedule.record_fire"
payload = { list_key = "test:fires" }
missed_run = "catch_up"
catch_up_window_seconds = 60
catch_up_max = 100
"""


def start_beat(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "celery", "-A", "vox_flow.app", "beat",
        "-S", "vox_flow.schedules.scheduler:VoxScheduler", "-l", "info",
        "--pidfile", "",
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def leader_pid(client: redis.Redis, timeout: float) -> tuple[int, float]:
    """The pid of the leading replica (waits for one), and when it was first seen leading."""
    value = wait_for(lambda: client.get("vf:sched:leader"), timeout, "a leader")
    return int(value.decode().split()[0].split(":")[1]), time.monotonic()


def test_leader_killed_twice_every_fire_runs_exactly_once(
    start_worker: StartWorker, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "test.toml").write_text(SCHEDULE)
    settings = {
        "task_modules": TASKS,
        "schedules_dir": str(schedules),
        "beat_leader_ttl_seconds": str(TTL),
        "beat_tick_seconds": str(TICK),
    }
    start_worker("w1", **settings)
    env = worker_env(redis_url, data_dir, **{k: str(v) for k, v in settings.items()})
    client = redis.Redis.from_url(redis_url)
    beats = {}
    try:
        for n in range(3):
            proc = start_beat(env, tmp_path / f"beat{n}.log")
            beats[proc.pid] = proc
        takeovers = []  # (seconds until a new leader was seen, lock time left at the kill)
        leader, _ = leader_pid(client, 30)
        for _ in range(2):
            time.sleep(8)
            os.killpg(leader, signal.SIGKILL)
            beats.pop(leader).wait(10)
            killed_at = time.monotonic()
            left = client.pttl("vf:sched:leader") / 1000
            assert left > 0  # the dead leader's lock lives on until its TTL
            while True:
                new, seen = leader_pid(client, TTL + 5)
                if new != leader:
                    break
                time.sleep(0.05)
            takeovers.append((seen - killed_at, left))
            leader = new
        time.sleep(8)
    finally:
        for proc in beats.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in beats.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    # Let the worker finish what was enqueued, then count executed fires by key.
    queue = "vf.tests.schedule.record_fire"
    wait_for(lambda: client.llen(queue) == 0, 20, "the worker to run every enqueued fire", 0.2)
    time.sleep(1)
    rows = [row.decode().split()[0] for row in client.lrange("test:fires", 0, -1)]
    counts = Counter(rows)
    assert [key for key, n in counts.items() if n > 1] == [], "a fire ran twice"
    fires = sorted(fire_time(key) for key in counts)
    expected = [fires[0] + timedelta(seconds=n) for n in range(len(fires))]
    # catch_up with a 60 s window: the downtimes lose nothing, so the fires are every second.
    assert fires == expected, f"missing: {sorted(set(expected) - set(fires))}"
    assert len(fires) >= 25
    # A follower takes the lock at its first tick after the dead leader's lock expires: within
    # the time the lock had left, one tick, and this test's 0.05 s polling. The rest of the
    # margin is for a follower or this process waiting for a core (2 shared cores).
    margin = TICK + 0.05 + 0.35
    assert all(t <= left + margin for t, left in takeovers), takeovers
