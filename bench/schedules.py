"""Benchmark of vox_flow schedules: fire lateness next to plain Celery beat, and tick cost.

    python bench/schedules.py [--quick]

1. Lateness: ``actual task start - scheduled instant`` over 200 fires at one-second
   resolution (5 schedules firing every second, 40 s), for vox_flow (``celery beat -S
   VoxScheduler`` + a ``celery worker``) and, in the same run on the same Redis server, for
   plain Celery beat (5 ``beat_schedule`` entries every second + a plain worker). Plain beat
   does not say which instant it meant, so its scheduled instant is the one its own rule
   gives: the previous send of that entry plus one second (each send is stamped).
2. Tick cost: ``Timetable.tick()`` with 10,000 schedules loaded (hourly schedules spread
   over the hour, so a tick fires what a real 10k-schedule load fires), as leader; and the
   cost of taking the lead (reading every state).

Everything runs against a private Redis server; every process started is stopped at the end.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery, signals

ROOT = Path(__file__).resolve().parents[1]
TASKS = "tests.integration.schedule_tasks"
SCHEDULES = 5
FIRES = 200

# --- the plain Celery app (loaded by its own worker and beat as `schedules:plain_app`) -----
plain_app = Celery("plain_bench", broker=os.environ.get("BENCH_PLAIN_BROKER", "redis://"))
plain_app.conf.update(
    task_default_queue="plain_bench",
    beat_schedule={
        f"plain-{n}": {"task": "plain_fire", "schedule": 1.0, "args": (f"plain-{n}",), "kwargs": {}}
        for n in range(SCHEDULES)
    },
    beat_max_loop_interval=1,
    worker_hijack_root_logger=False,
)


@plain_app.task(name="plain_fire")
def plain_fire(entry: str, sent: float = 0.0) -> None:
    started = time.time()
    _plain_redis().rpush("bench:plain", f"{entry} {sent:.6f} {started:.6f}")


_client: Any = None


def _plain_redis() -> Any:
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(plain_app.conf.broker_url)
    return _client


@signals.before_task_publish.connect
def _stamp(sender: str | None = None, body: Any = None, **_: Any) -> None:
    if sender == "plain_fire" and isinstance(body, tuple):
        body[1]["sent"] = time.time()  # when plain beat sent it


# --- the benchmark -------------------------------------------------------------------------
def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _wait_ready(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in log.read_bytes():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready: {log}")
        time.sleep(0.1)


def lateness(url: str, work: Path, seconds: float) -> dict[str, Any]:
    import redis

    schedules = work / "schedules"
    schedules.mkdir()
    blocks = [
        f'[[schedule]]\nname = "bench-{n}"\ncron = "* * * * * *"\n'
        f'task = "tests.schedule.record_fire"\npayload = {{ list_key = "bench:vox" }}\n'
        for n in range(SCHEDULES)
    ]
    (schedules / "bench.toml").write_text("\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    env.update(
        VOX_FLOW_BROKER_URL=url,
        VOX_FLOW_DATA_DIR=str(work / "data"),
        VOX_FLOW_TASK_MODULES=TASKS,
        VOX_FLOW_SCHEDULES_DIR=str(schedules),
        BENCH_PLAIN_BROKER=url.rsplit("/", 1)[0] + "/1",
        PYTHONPATH=f"{ROOT / 'bench'}{os.pathsep}{ROOT}",
        PYTHONUNBUFFERED="1",
    )
    celery = [sys.executable, "-m", "celery"]
    worker_opts = ["-P", "solo", "-l", "info", "--without-mingle", "--without-gossip"]
    procs = []
    try:
        procs.append(_start([*celery, "-A", "vox_flow.app", "worker", *worker_opts, "-n",
                             "vox@%h"], env, work / "vox-worker.log"))  # fmt: skip
        procs.append(_start([*celery, "-A", "schedules:plain_app", "worker", *worker_opts,
                             "-n", "plain@%h"], env, work / "plain-worker.log"))  # fmt: skip
        _wait_ready(work / "vox-worker.log")
        _wait_ready(work / "plain-worker.log")
        procs.append(_start([*celery, "-A", "vox_flow.app", "beat", "-S",
                             "vox_flow.schedules.scheduler:VoxScheduler", "-l", "info",
                             "--pidfile", ""], env, work / "vox-beat.log"))  # fmt: skip
        procs.append(_start([*celery, "-A", "schedules:plain_app", "beat", "-l", "info",
                             "--pidfile", "", "-s", str(work / "beat-schedule")], env,
                            work / "plain-beat.log"))  # fmt: skip
        time.sleep(seconds + 3)
    finally:
        _stop(procs)
    vox_client = redis.Redis.from_url(url)
    plain_client = redis.Redis.from_url(env["BENCH_PLAIN_BROKER"])
    vox: list[float] = []
    for row in vox_client.lrange("bench:vox", 0, -1):
        key, started = row.decode().split()
        fire = datetime.fromisoformat(key.split(":", 2)[2]).timestamp()
        vox.append((float(started) - fire) * 1000)
    by_entry: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in plain_client.lrange("bench:plain", 0, -1):
        entry, sent, started = row.decode().split()
        by_entry[entry].append((float(sent), float(started)))
    plain: list[float] = []
    for runs in by_entry.values():
        runs.sort()
        plain += [
            (start - (prev + 1.0)) * 1000 for (prev, _), (_, start) in itertools.pairwise(runs)
        ]
    vox, plain = vox[-FIRES:], plain[-FIRES:]
    return {
        "fires": len(vox),
        "lateness_p50_ms": round(_percentile(vox, 0.5), 1),
        "lateness_p99_ms": round(_percentile(vox, 0.99), 1),
        "lateness_max_ms": round(max(vox), 1),
        "beat_fires": len(plain),
        "beat_lateness_p50_ms": round(_percentile(plain, 0.5), 1),
        "beat_lateness_p99_ms": round(_percentile(plain, 0.99), 1),
    }


def tick_cost(url: str, seconds: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import importlib

    from vox_flow.app import configure
    from vox_flow.config import Settings

    app = configure(Settings(broker_url=url, task_modules=[TASKS]))
    from vox_flow.contracts.schedule import ScheduleDefinition
    from vox_flow.schedules.loader import Loaded
    from vox_flow.schedules.timetable import Timetable

    importlib.import_module(TASKS)
    app.redis.flushdb()
    loaded = Loaded()
    for n in range(10_000):
        name = f"tick-{n}"
        loaded.definitions[name] = ScheduleDefinition(
            name=name,
            cron=f"{n % 60} * * * * {(n // 60) % 60}",  # hourly, spread over the hour
            task="tests.schedule.record_fire",
            payload={"list_key": "bench:tick"},
        )
        loaded.files[name] = Path("bench")
    timetable = Timetable(app, loaded)
    started = time.perf_counter()
    timetable.tick()  # takes the lead and reads every state
    takeover_ms = (time.perf_counter() - started) * 1000
    costs: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        wait = timetable.tick()
        costs.append((time.perf_counter() - started) * 1000)
        time.sleep(wait)
    fired = app.redis.llen("vf.tests.schedule.record_fire")
    timetable.close()
    return {
        "tick_ms_10k": round(_percentile(costs, 0.99), 2),
        "tick_ms_10k_p50": round(_percentile(costs, 0.5), 2),
        "tick_ms_10k_mean": round(statistics.fmean(costs), 2),
        "ticks": len(costs),
        "tick_fires": int(fired),
        "takeover_ms_10k": round(takeover_ms, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short run (under ~90 s)")
    args = parser.parse_args()
    from vox_flow.broker.server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="vf-bench-sched-"))
    server = RedisServer(work / "redis", appendonly=False)
    server.start()
    try:
        seconds = FIRES / SCHEDULES + 2
        figures = lateness(server.url, work, seconds)
        figures |= tick_cost(server.url, 5 if args.quick else 20)
    finally:
        server.stop()
    figures["targets"] = {"lateness_p99_ms": 250, "tick_ms_10k": 50}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
