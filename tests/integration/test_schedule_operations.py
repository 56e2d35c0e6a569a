"""Schedule operations against real processes: pause, resume, trigger, reload (Python API and
CLI, each audited), and the buffer_one / cancel_previous overlap policies.

Fires are counted by idempotency key (``schedule:NAME:FIRE_TIME``), as the replica test does.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from tests.helpers import audit_entries, fire_time, wait_for
from tests.integration import schedule_tasks  # noqa: F401  (registers the tasks fired here)
from tests.integration.conftest import StartWorker
from tests.integration.workers import ROOT, run_cli, worker_env
from tests.integration.workers import stop_group as stop
from vox_flow.actions.perform import Auditor
from vox_flow.actions.schedules import TRIGGER, schedule_effects, trigger
from vox_flow.app import app
from vox_flow.config import Settings
from vox_flow.contracts.audit import AuditEntry
from vox_flow.schedules.loader import load_dir
from vox_flow.schedules.store import ScheduleStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = "tests.integration.schedule_tasks"
RECORD_QUEUE = "vf.tests.schedule.record_fire"


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Env:
    """The settings every process of one test shares (worker, replica, CLI)."""

    redis_url: str
    data_dir: Path
    schedules: Path

    @property
    def settings(self) -> dict[str, str]:
        return {
            "task_modules": TASKS,
            "schedules_dir": str(self.schedules),
            "beat_leader_ttl_seconds": "3",
            "beat_tick_seconds": "0.1",
        }

    def env(self) -> dict[str, str]:
        return worker_env(self.redis_url, self.data_dir, **self.settings)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``vox-flow ARGS`` as an operator runs it."""
        return run_cli(self.redis_url, self.data_dir, *args, **self.settings)


@pytest.fixture
def env(redis_url: str, data_dir: Path, tmp_path: Path) -> Env:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    return Env(redis_url, data_dir, schedules)


StartBeat = Callable[[], subprocess.Popen[bytes]]


@pytest.fixture
def start_beat(env: Env, tmp_path: Path) -> Iterator[StartBeat]:
    """Start ``vox-flow beat`` replicas; each is stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / f"beat{len(started)}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vox_flow.cli", "beat", "-l", "info"],
                env=env.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        wait_for(lambda: app.redis.get("vf:sched:leader") is not None, 30, "a leader")
        return proc

    yield start
    for proc in started:
        stop(proc)


def rows(list_key: str) -> list[list[str]]:
    raw: list[bytes] = app.redis.lrange(list_key, 0, -1)  # type: ignore[assignment]
    return [row.decode().split() for row in raw]


def fires(list_key: str) -> list[datetime]:
    """Fire times of the runs record_fire logged, in order; asserts no key ran twice."""
    keys = [row[0] for row in rows(list_key)]
    assert [k for k, n in Counter(keys).items() if n > 1] == [], "a fire ran twice"
    return sorted(fire_time(key) for key in keys)


def every_second(times: list[datetime]) -> bool:
    return all(b - a == timedelta(seconds=1) for a, b in pairwise(times))


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def summary(entries: list[AuditEntry]) -> list[tuple[str, str, str, str]]:
    return [(e.actor, e.action, e.target, e.reason) for e in entries]


def assert_audit_verifies(env: Env, count: int) -> None:
    result = env.cli("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {count} entries"), result.stdout


EVERY_SECOND = """
[[schedule]]
name = "{name}"
cron = "* * * * * *"
task = "tests.schedule.record_fire"
payload = {{ list_key = "{list_key}" }}
missed_run = "catch_up"
catch_up_window_seconds = 60
catch_up_max = 100
"""


# --- pause / resume ----------------------------------------------------------------------------


def test_pause_stops_fires_and_resume_restarts_at_the_next_fire_without_catching_up(
    env: Env, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    # catch_up with a wide window: were paused fires merely "missed", resume would run them.
    (env.schedules / "tick.toml").write_text(EVERY_SECOND.format(name="tick", list_key="t:fires"))
    start_worker("w1", **env.settings)
    start_beat()
    wait_for(lambda: len(rows("t:fires")) >= 2, 15, "two fires before the pause")

    paused = env.cli("schedules", "pause", "tick", "--reason", "db migration", "--actor", "ana")
    paused_at = time.time()
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "paused tick (audit entry 1)"
    assert ScheduleStore(app.redis).state("tick").paused
    time.sleep(3.5)  # three or more fires fall inside the pause

    resume_asked = time.time()
    resumed = env.cli("schedules", "resume", "tick", "--reason", "done", "--actor", "ana")
    resumed_at = time.time()
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "resumed tick (audit entry 2)"
    wait_for(
        lambda: fires("t:fires")[-1] >= at(resumed_at + 2), 10, "fires two seconds after resume"
    )
    wait_for(lambda: app.redis.llen(RECORD_QUEUE) == 0, 10, "an empty queue")

    times = fires("t:fires")
    before = [f for f in times if f <= at(paused_at)]
    during = [f for f in times if at(paused_at) < f < at(resume_asked)]
    after = [f for f in times if f > at(resumed_at)]
    assert during == [], "a fire ran while paused"
    assert len(before) >= 2 and every_second(before)
    # Resume restarts at the next regular fire, and the paused fires are not caught up:
    # nothing ran between the pause and the resume, and after it every second fires again.
    assert after and after[0] <= at(math.ceil(resumed_at)), (resumed_at, after[0])
    assert every_second(after)

    assert summary(audit_entries(env.data_dir)) == [
        ("ana", "schedule.pause", "tick", "db migration"),
        ("ana", "schedule.resume", "tick", "done"),
    ]
    assert_audit_verifies(env, 2)


# --- trigger ----------------------------------------------------------------------------------

YEARLY = """
[[schedule]]
name = "yearly"
cron = "@yearly"
task = "tests.schedule.record_fire"
payload = { list_key = "t:triggered" }
"""


def test_trigger_fires_now_each_time_under_its_own_key_and_a_replay_enqueues_nothing(
    env: Env, start_worker: StartWorker
) -> None:
    (env.schedules / "yearly.toml").write_text(YEARLY)
    loaded = load_dir(app, env.schedules)
    assert loaded.errors == []
    # No worker yet: every message enqueued stays on the queue to be counted. (Counting runs
    # could not see a duplicate message: the worker skips a key it already ran.)
    auditor = Auditor.open(Settings(data_dir=env.data_dir))
    try:
        asked = datetime.now(UTC)
        first, run1 = trigger(app, loaded, "yearly", auditor=auditor, actor="bo", reason="rerun")
        time.sleep(0.01)  # the fire time has millisecond resolution
        second, run2 = trigger(app, loaded, "yearly", auditor=auditor, actor="bo", reason="again")
        assert app.redis.llen(RECORD_QUEUE) == 2

        # The outbox replaying the first entry's effect enqueues nothing (same key).
        effect = schedule_effects(app).outside_effect(TRIGGER)
        assert effect is not None
        effect(first)
        assert app.redis.llen(RECORD_QUEUE) == 2
    finally:
        auditor.store.dispose()

    cli = env.cli("schedules", "trigger", "yearly", "--reason", "from cli", "--actor", "cy")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("triggered yearly: task ") and "(audit entry 3)" in cli.stdout
    assert app.redis.llen(RECORD_QUEUE) == 3

    start_worker("w1", **env.settings)
    keys = [run1.result(timeout=30).key, run2.result(timeout=30).key]
    # Twice triggered: two runs under two fire keys, each the fire time its entry holds.
    assert run1.id != run2.id and keys[0] != keys[1]
    assert keys == [
        f"schedule:yearly:{first.payload_data()['fire_time']}",
        f"schedule:yearly:{second.payload_data()['fire_time']}",
    ]
    # Now, truncated to the millisecond.
    low = asked - timedelta(milliseconds=1)
    assert all(low < fire_time(k) <= datetime.now(UTC) for k in keys), (asked, keys)
    wait_for(lambda: len(rows("t:triggered")) >= 3, 30, "the CLI's triggered run")
    assert len(fires("t:triggered")) == 3

    unknown = env.cli("schedules", "pause", "nope", "--actor", "cy")
    assert unknown.returncode == 1
    assert "no schedule named 'nope'; loaded: yearly" in unknown.stderr

    entries = audit_entries(env.data_dir)
    assert summary(entries) == [
        ("bo", "schedule.trigger", "yearly", "rerun"),
        ("bo", "schedule.trigger", "yearly", "again"),
        ("cy", "schedule.trigger", "yearly", "from cli"),
    ]
    assert entries[2].payload_data()["task"] == "tests.schedule.record_fire"
    assert rows("t:triggered")[2][0] == f"schedule:yearly:{entries[2].payload_data()['fire_time']}"
    # A trigger is outside the cron: the schedule's own state is not touched.
    assert ScheduleStore(app.redis).state("yearly").last_fire is None
    assert_audit_verifies(env, 3)


# --- reload ----------------------------------------------------------------------------------


def test_reload_picks_up_a_file_added_while_the_replica_runs(
    env: Env, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    (env.schedules / "yearly.toml").write_text(YEARLY)
    start_worker("w1", **env.settings)
    beat = start_beat()
    leader = app.redis.get("vf:sched:leader")

    (env.schedules / "added.toml").write_text(EVERY_SECOND.format(name="added", list_key="t:add"))
    (env.schedules / "broken.toml").write_text('[[schedule]]\nname = "broken"\ncron = "nope"\n')
    time.sleep(1.5)  # files alone change nothing: replicas reload when asked
    assert rows("t:add") == []

    # The files are checked first: the broken one is named, and nothing is reloaded (exit 2).
    refused = env.cli("schedules", "reload")
    assert refused.returncode == 2, refused.stderr
    assert "broken.toml" in refused.stderr and "nothing reloaded" in refused.stderr
    assert ScheduleStore(app.redis).generation() == 0

    asked = time.time()
    reloaded = env.cli("schedules", "reload", "--skip-bad")
    # With --skip-bad the broken file is reported (exit 1), the reload is asked all the same.
    assert reloaded.returncode == 1
    assert "broken.toml" in reloaded.stderr
    assert "asked every replica to reload (generation 1); 2 schedules" in reloaded.stdout
    wait_for(lambda: len(rows("t:add")) >= 3, 15, "three fires of the added schedule")

    times = fires("t:add")
    # The added schedule starts with nothing missed (catch_up would otherwise run the fires
    # since the file appeared) and then fires every second.
    assert times[0] > at(asked), (asked, times[0])
    assert every_second(times)
    # Without a restart: the same replica still leads under the same fencing token.
    assert beat.poll() is None
    assert app.redis.get("vf:sched:leader") == leader


# --- overlap ---------------------------------------------------------------------------------


@dataclass
class Run:
    key: str
    task_id: str
    start: float
    end: float | None

    @property
    def fire(self) -> datetime:
        return fire_time(self.key)


def runs(list_key: str) -> list[Run]:
    """The slow_run runs logged, by start time; asserts no key started twice."""
    out: dict[str, Run] = {}
    for kind, key, task_id, when in rows(list_key):
        if kind == "start":
            assert key not in out, f"{key} started twice"
            out[key] = Run(key, task_id, float(when), None)
        else:
            out[key].end = float(when)
    return sorted(out.values(), key=lambda run: run.start)


def slow_schedule(name: str, cron: str, overlap: str, list_key: str, seconds: float) -> str:
    return f"""
[[schedule]]
name = "{name}"
cron = "{cron}"
task = "tests.schedule.slow_run"
payload = {{ list_key = "{list_key}", seconds = {seconds} }}
overlap = "{overlap}"
"""


def test_buffer_one_holds_one_fire_until_the_run_ends_and_drops_the_rest(
    env: Env, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    # Every second, each run 2 s, two worker processes: without the policy runs would overlap.
    run_seconds = 2.0
    (env.schedules / "buf.toml").write_text(
        slow_schedule("buf", "* * * * * *", "buffer_one", "t:buf", run_seconds)
    )
    start_worker("w1", pool="prefork", concurrency=2, **env.settings)
    start_beat()
    wait_for(lambda: sum(r.end is not None for r in runs("t:buf")) >= 4, 30, "four ended runs")

    done = [r for r in runs("t:buf") if r.end is not None]
    for previous, run in pairwise(done):
        assert previous.end is not None
        # One run at a time (the policy's promise, exact) ...
        assert run.start >= previous.end, "runs overlapped"
        # ... the held fire released when the previous run ended: by the first tick (0.1 s)
        # that reads its result, then the path of any fire (fsynced submit, BRPOP, dispatch
        # to an idle process). That takes a fraction of a second, but each step may wait for
        # one of two shared cores, so the bound is no latency target but a run's length: a
        # longer gap means the schedule sat idle, a fire held, for as long as a run takes.
        assert run.start - previous.end < run_seconds, (previous, run)
        # ... under its own (earlier) fire time: the first fire that came while the previous
        # run was going. The fire(s) after it, while it was held, were dropped.
        assert previous.fire < run.fire <= at(previous.start + 1.0), (previous, run)
        assert run.start - run.fire.timestamp() >= 0.5, "not a held fire"
    # A held run starts about a second after its fire and lasts 2 s: of the fires meanwhile,
    # one is held and the other dropped, so from then on every other fire runs.
    fired = [r.fire for r in done[1:]]
    assert all(b - a >= timedelta(seconds=2) for a, b in pairwise(fired)), [
        (r.key, r.start, r.end) for r in done
    ]


def test_cancel_previous_terminates_the_running_run_on_a_prefork_worker(
    env: Env, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    # Every 2 s, each run 30 s, two worker processes: unless the previous run is terminated,
    # the third fire would wait for a free process.
    every, run_seconds = 2, 30.0
    (env.schedules / "cancel.toml").write_text(
        slow_schedule("cancel", f"* * * * * */{every}", "cancel_previous", "t:cancel", run_seconds)
    )
    # Short leases, so that a terminated run's message, were it left to the reaper, would be
    # taken back within the test (lease + reaper interval + renew interval: 3 s).
    lease = {"lease_seconds": "2", "reaper_interval_seconds": "0.5", "lease_renew_seconds": "0.5"}
    worker = start_worker("w1", pool="prefork", concurrency=2, **env.settings, **lease)
    beat = start_beat()
    wait_for(lambda: len(runs("t:cancel")) >= 4, 20, "four runs")
    # Pause before stopping the beat: SIGTERM raises SystemExit wherever the beat is, and
    # between a fire's revoke and its commit that leaves the state naming the revoked run.
    # Fires are serial, so once the first fire after the pause is recorded (as skipped),
    # every fire before it is committed and none is in flight.
    store = ScheduleStore(app.redis)
    store.set_paused("cancel", True)
    next_fire = at(time.time() // 2 * 2 + 2)  # the cron fires on even seconds
    wait_for(lambda: (store.state("cancel").last_fire or at(0)) >= next_fire, 10, "a paused fire")
    stop(beat)
    state = store.state("cancel")
    assert state.pending_fire is None
    # The last run enqueued is the one the schedule's state names (it may start just now).
    last_id = state.last_task_id
    wait_for(lambda: runs("t:cancel")[-1].task_id == last_id, 5, "the last fire's run")
    last = runs("t:cancel")[-1]
    wait_for(
        lambda: all(
            str(app.AsyncResult(r.task_id).state) == "REVOKED" for r in runs("t:cancel")[:-1]
        ),
        5,
        "every earlier run revoked",
    )

    started = runs("t:cancel")
    assert started[-1] == last
    fired = [r.fire for r in started]
    assert all(b - a == timedelta(seconds=every) for a, b in pairwise(fired))
    # A run that waited for a free process would start when the run two fires before it ends,
    # at least 30 - 2 x 2 = 26 s after its fire. Not waiting costs a tick, an fsynced submit,
    # a BRPOP and a dispatch, maybe to a process forked to replace a terminated one: under a
    # second, a few on loaded shared cores. Half the waiting time tells the two apart.
    waited = run_seconds - 2 * every
    for run in started:
        assert run.end is None, f"{run.key} ran to its end"
        late = run.start - run.fire.timestamp()
        assert late < waited / 2, f"{run.key} started {late:.1f} s late: it waited for a process"
    # Still running (it reads PENDING: task_track_started is off).
    assert str(app.AsyncResult(last.task_id).state) == "PENDING"
    # A terminated run is not redelivered: neither requeued at once (task_reject_on_worker_lost)
    # nor taken back by the reaper once its lease lapses (3 s, plus a second to start it).
    time.sleep(4.0)
    assert len(runs("t:cancel")) == len(started)
    worker.kill()  # the last run sleeps 30 s: no warm shutdown
