"""Bad schedule files beside good ones, against real `vox-flow beat` replicas and the CLI: each
bad file is reported and left out, and the good schedules keep firing, at start, after a
leader change and after a reload.

Before: a cron no date matches (30 February) made every leader raise at its first fire-time
question, invalid UTF-8 and 10,000-deep JSON raised out of the loader, so `vox-flow beat`
exited 1 at start (each new leader too), a running leader died at the reload that brought
such a file, and `schedules list` showed a traceback.

No worker runs: a fire is a message on the task's queue and the schedule's ``last_fire``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.integration import schedule_tasks  # noqa: F401  (registers the task fired here)
from tests.integration.workers import ROOT, run_cli, worker_env
from tests.integration.workers import stop_group as stop
from vox_flow.app import app
from vox_flow.schedules.store import ScheduleStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUEUE = "vf.tests.schedule.record_fire"
SETTINGS = {
    "task_modules": "tests.integration.schedule_tasks",
    "beat_leader_ttl_seconds": "3",
    "beat_tick_seconds": "0.1",
}
EVERY_SECOND = """
[[schedule]]
name = "{name}"
cron = "* * * * * *"
task = "tests.schedule.record_fire"
payload = {{ list_key = "t:{name}" }}
"""
FEB_30 = """
[[schedule]]
name = "leap-ish"
cron = "0 0 30 2 *"
task = "tests.schedule.record_fire"
payload = { list_key = "t:never" }
"""
# 'é' in Latin-1: one byte, 0xe9, which is no UTF-8.
LATIN_1 = '[[schedule]]\nname = "café"\ncron = "@daily"\ntask = "tests.schedule.record_fire"\n'
DEEP = (
    '{"schedule": [{"name": "deep", "cron": "@daily", "task": "tests.schedule.record_fire",'
    ' "payload": {"list_key": "t:deep", "x": ' + "[" * 10_000 + "]" * 10_000 + "}}]}"
)
BAD = ("feb30.toml", "latin1.toml", "deep.json")
REASONS = {
    "feb30.toml": "schedule leap-ish, field cron: '0 0 30 2 *' never fires",
    "latin1.toml": "not UTF-8: byte 0xe9 at line 2",
    "deep.json": "nested deeper than 64 levels",
}


def write_bad_files(directory: Path) -> None:
    (directory / "feb30.toml").write_text(FEB_30)
    (directory / "latin1.toml").write_bytes(LATIN_1.encode("latin-1"))
    (directory / "deep.json").write_text(DEEP)


@pytest.fixture
def schedules(tmp_path: Path) -> Path:
    path = tmp_path / "schedules"
    path.mkdir()
    return path


def settings(schedules: Path) -> dict[str, str]:
    return {**SETTINGS, "schedules_dir": str(schedules)}


StartBeat = Callable[[], tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def start_beat(
    redis_url: str, data_dir: Path, schedules: Path, tmp_path: Path
) -> Iterator[StartBeat]:
    """Start a `vox-flow beat` replica (and its log); each is stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], Path]:
        log_path = tmp_path / f"beat{len(started)}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vox_flow.cli", "beat", "-l", "info"],
                env=worker_env(redis_url, data_dir, **settings(schedules)),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc, log_path

    yield start
    for proc in started:
        stop(proc)


def leading(proc: subprocess.Popen[bytes], log: Path) -> bytes:
    """The leader lock's value once ``proc`` leads; fails at once if ``proc`` exits."""

    def check() -> bytes | None:
        assert proc.poll() is None, f"beat exited {proc.returncode}: {log.read_text()[-3000:]}"
        value: bytes | None = app.redis.get("vf:sched:leader")
        return value if value and f":{proc.pid}:".encode() in value else None

    return wait_for(check, 30, "the replica to lead")


def fired_since(name: str, since: float) -> bool:
    last = ScheduleStore(app.redis).state(name).last_fire
    return last is not None and last > datetime.fromtimestamp(since, UTC)


def assert_reported(log: Path, schedules: Path) -> None:
    text = log.read_text()
    for name in BAD:
        assert f"schedule file not loaded: {schedules / name}: " in text, text[-3000:]
        assert REASONS[name] in text


def test_leaders_fire_the_good_schedules_and_report_the_bad_files(
    start_beat: StartBeat, schedules: Path, redis_url: str, data_dir: Path
) -> None:
    (schedules / "tick.toml").write_text(EVERY_SECOND.format(name="tick"))
    write_bad_files(schedules)

    first, first_log = start_beat()
    leading(first, first_log)
    wait_for(lambda: app.redis.llen(QUEUE) >= 3, 15, "three fires of the good schedule")
    assert first.poll() is None
    assert_reported(first_log, schedules)

    # The next leader loads the same files, and lives too.
    stop(first)
    second, second_log = start_beat()
    leading(second, second_log)
    taken = time.time()
    wait_for(lambda: fired_since("tick", taken + 1), 15, "fires under the second leader")
    assert second.poll() is None
    assert_reported(second_log, schedules)

    # `schedules list`: every good schedule on stdout, every bad file on stderr, exit 1.
    cli = settings(schedules)
    listed = run_cli(redis_url, data_dir, "schedules", "list", "--next", "1", **cli)
    assert listed.returncode == 1, listed.stderr
    assert listed.stdout.startswith("tick: * * * * * * [UTC] -> tests.schedule.record_fire\n")
    assert "Traceback" not in listed.stderr
    lines = listed.stderr.splitlines()
    assert lines[0] == "error: 3 schedule file(s) do not load; their schedules are left out:"
    for name in BAD:
        assert any(line.startswith(f"  {schedules / name}: {REASONS[name]}") for line in lines)

    as_json = run_cli(redis_url, data_dir, "schedules", "list", "--json", **cli)
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert [row["name"] for row in document["data"]] == ["tick"]
    errors = {Path(e["file"]).name: e for e in document["errors"]}
    assert sorted(errors) == sorted(BAD)
    assert errors["feb30.toml"]["schedule"] == "leap-ish"
    assert errors["feb30.toml"]["field"] == "cron"
    assert errors["latin1.toml"]["schedule"] is None


def test_a_running_leader_survives_a_reload_that_brings_bad_files(
    start_beat: StartBeat, schedules: Path, redis_url: str, data_dir: Path
) -> None:
    (schedules / "tick.toml").write_text(EVERY_SECOND.format(name="tick"))
    beat, log = start_beat()
    leader = leading(beat, log)
    wait_for(lambda: app.redis.llen(QUEUE) >= 2, 15, "two fires before the reload")

    write_bad_files(schedules)
    (schedules / "added.toml").write_text(EVERY_SECOND.format(name="added"))
    store = ScheduleStore(app.redis)
    cli = settings(schedules)

    # Checked before the generation moves: refused, and every bad file named.
    refused = run_cli(redis_url, data_dir, "schedules", "reload", "--json", **cli)
    assert refused.returncode == 2, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "bad_schedule_file"
    assert "refused, nothing reloaded: 3 schedule file(s) do not load" in error["message"]
    assert sorted(Path(f["field"]).name for f in error["fields"]) == sorted(BAD)
    assert store.generation() == 0

    asked = time.time()
    reloaded = run_cli(redis_url, data_dir, "schedules", "reload", "--skip-bad", **cli)
    assert reloaded.returncode == 1, reloaded.stderr
    assert "asked every replica to reload (generation 1); 2 schedules" in reloaded.stdout
    assert "error: 3 schedule file(s) do not load" in reloaded.stderr
    assert store.generation() == 1

    # The leader reloaded: the added schedule fires beside the old one, bad files left out.
    wait_for(
        lambda: fired_since("added", asked + 1) and fired_since("tick", asked + 1),
        15,
        "both good schedules firing after the reload",
    )
    assert beat.poll() is None
    assert app.redis.get("vf:sched:leader") == leader  # the same replica, the same token
    assert_reported(log, schedules)
