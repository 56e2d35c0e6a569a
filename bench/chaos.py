"""Chaos run: does every keyed task settle once while workers and the broker are SIGKILLed?

    .venv/bin/python bench/chaos.py [--quick] [--tasks N] [--kill-interval S]
                                    [--broker-restarts N] [--seed N] [--keep]

Each scenario runs on a private Redis (AOF, ``appendfsync always``) in a temp dir. Its workers
are ``vox-flow worker -p 2`` supervisors or prefork ``celery -A vox_flow.app worker -P
prefork -c 2`` processes, importing the tasks of bench/chaos_effects.py. A feeder submits the
keyed tasks (``submit_many`` with idempotency keys; a batch that meets the broker down is sent
again with the same keys), all at once by default, among them tasks whose first run passes its
hard time limit. Every ``kill_interval`` seconds one worker process is SIGKILLed: a child (a
supervisor's ``celery`` child, a prefork pool process) or, every ``supervisor_every``-th kill,
a supervisor / prefork main process, which is started again ~1 s later (as systemd would). The
broker is SIGKILLed ``broker_restarts`` times, spread over the work, and started again ~2 s
later (same port, same data). A worker process that exits by itself is counted and restarted.

The kills stop once the backlog is drained; then the run waits until every key is settled (a
stored result or a dead letter), at most ``settle_deadline`` seconds after the last kill. Then,
by key, from the effects log, the tasks' handles and the dead-letter store:

* ``lost``: no effect ever ran, no stored result, no dead letter;
* ``unsettled_after_effect``: its effect ran, but no result and no dead letter by the deadline;
* ``failed_without_dead_letter``: a stored failure, but no dead letter to replay;
* ``duplicated_effects``: keys whose effect ran more than once; of them,
  ``duplicated_in_documented_window``: every earlier run was in a process SIGKILLed (by the
  harness, with its prefork parent, or by the hard time limit) after it wrote the effect
  (``chaos_effects.in_window_of``);
* ``supervisor_exits``: worker processes that exited without being killed;
* ``settle_seconds``: from the last kill or broker restart until the last key that settled did.

It passes (exit code 0) when the first three are 0, ``duplicated_effects ==
duplicated_in_documented_window``, ``supervisor_exits == 0`` and ``settle_seconds <= 35``.
Not a test: prints a line per scenario with the evidence of what failed, and one JSON object
(the totals, and ``scenarios``) as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import redis  # noqa: E402
from kombu.exceptions import OperationalError  # noqa: E402

from bench.chaos_effects import DIR_ENV, ChaosTasks, EffectsLog, in_window_of, register  # noqa: E402
from vox_flow.app import create_app  # noqa: E402
from vox_flow.application import VoxFlow  # noqa: E402
from vox_flow.broker.server import RedisServer  # noqa: E402
from vox_flow.config import Settings  # noqa: E402
from vox_flow.contracts.task import TaskStatus  # noqa: E402
from vox_flow.deadletters.store import DeadLetterStore  # noqa: E402
from vox_flow.handle import TaskHandle  # noqa: E402
from vox_flow.submit import submit, submit_many  # noqa: E402

SETTLE_LIMIT = 35.0  # seconds: the promise (a whole worker's messages are back within 35 s)
BROKER_ERRORS = (redis.RedisError, OperationalError, OSError)
SETTLED = (TaskStatus.SUCCESS, TaskStatus.FAILURE)


class ChaosError(RuntimeError):
    """The harness could not do its job (a worker never started, the broker did not come
    back): the run says nothing about vox_flow."""


@dataclass(frozen=True)
class Scenario:
    """One chaos run: its workers, its workload and its kills."""

    name: str
    layout: Literal["vox-flow", "prefork"] = "vox-flow"
    workers: int = 3  # supervisors, or prefork main processes
    processes: int = 2  # children of each
    tasks: int = 5000  # keyed effect tasks
    overruns: int = 20  # keyed tasks whose first run passes its hard time limit
    rate: float = 0.0  # submits per second; 0: all at once
    kill_interval: float = 3.0
    supervisor_every: int = 4  # every n-th kill hits a supervisor / main process (0: never)
    min_kills: int = 0  # the chaos goes on until this many kills, drained or not
    broker_restarts: int = 1
    broker_down: float = 2.0  # seconds the broker stays dead
    restart_after: float = 1.0  # seconds before a killed worker process is started again
    settle_deadline: float = 90.0  # seconds after the last kill; unsettled keys then count
    seed: int = 0
    worker_settings: tuple[tuple[str, str], ...] = ()  # extra VOX_FLOW_* of the workers

    def check(self) -> None:
        """Raise ValueError naming the first field that cannot make a run."""
        positive = ("workers", "processes", "tasks", "kill_interval")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and (value <= 0 if f.name in positive else value < 0):
                want = "positive" if f.name in positive else "0 or more"
                raise ValueError(f"scenario {self.name}: {f.name} must be {want}, got {value}")
        if self.settle_deadline <= SETTLE_LIMIT:
            raise ValueError(
                f"scenario {self.name}: settle_deadline must be over {SETTLE_LIMIT:g} s, got "
                f"{self.settle_deadline:g}: a shorter wait cannot tell late from lost"
            )


QUICK = (
    Scenario("quick-vox-flow", tasks=2500, overruns=6, settle_deadline=45.0),
    Scenario("quick-prefork", layout="prefork", workers=2, tasks=1200, overruns=4,
             settle_deadline=45.0, seed=1),
)  # fmt: skip
FULL = (
    Scenario("vox-flow-restart-1"),
    Scenario("vox-flow-restart-4", broker_restarts=4, seed=1),
    Scenario("prefork-restart-1", layout="prefork", seed=2),
    Scenario("prefork-restart-4", layout="prefork", broker_restarts=4, seed=3),
)


# --- processes --------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # The name may hold spaces and parentheses: the fields after the last ')' are fixed.
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


@dataclass
class Kill:
    """One process the harness killed (or saw die with the process it killed)."""

    at: float  # time.time() once the signal was sent (or the death was seen)
    pid: int
    role: str  # child | supervisor | pool-orphan | broker
    worker: int = -1


@dataclass
class Worker:
    """One supervisor (or prefork main process), started again whenever it dies."""

    index: int
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False  # the current process was killed by the harness
    restart_at: float | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the cleanup takes its children too
            )  # fmt: skip
        self.started.append(self.process)
        self.killed, self.restart_at = False, None

    def tail(self, lines: int = 15) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def stop_all(self) -> None:
        """SIGTERM every process group this worker ever started, then SIGKILL what is left."""
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # Children of a supervisor killed earlier stay in its group: take them too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def worker_env(scenario: Scenario, url: str, root: Path, index: int) -> dict[str, str]:
    """The environment of one worker: the private broker, the chaos tasks, nothing of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    env.update(
        VOX_FLOW_BROKER_URL=url,
        VOX_FLOW_DATA_DIR=str(root / f"data-{index}"),
        VOX_FLOW_TASK_MODULES="bench.chaos_effects",
        VOX_FLOW_NODE_ID=f"chaos-{index}",  # the supervisors stand for nodes
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env[DIR_ENV] = str(root)
    env.update({f"VOX_FLOW_{k.upper()}": v for k, v in scenario.worker_settings})
    return env


def worker_args(scenario: Scenario, index: int) -> list[str]:
    """The command a user runs: ``vox-flow worker -p N`` or a prefork ``celery worker``."""
    if scenario.layout == "vox-flow":
        script = Path(sys.executable).with_name("vox-flow")
        cli = [str(script)] if script.exists() else [sys.executable, "-m", "vox_flow.cli"]
        return [*cli, "worker", "-p", str(scenario.processes), "-l", "warning"]
    return [
        sys.executable, "-m", "celery", "-A", "vox_flow.app", "worker",
        "-P", "prefork", "-c", str(scenario.processes), "-n", f"chaos{index}@%h", "-l", "warning",
    ]  # fmt: skip


# --- the workload and what became of it ------------------------------------------------


class Feeder(threading.Thread):
    """Submits the scenario's keyed tasks, at its rate or all at once; a batch the broker
    refused is sent again with the same keys (which makes sending it twice harmless)."""

    def __init__(self, scenario: Scenario, tasks: ChaosTasks) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.scenario, self.tasks = scenario, tasks
        self.handles: dict[str, TaskHandle[Any]] = {}
        self.retries = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        rng = random.Random(scenario.seed)
        self.ms = [rng.randint(5, 20) for _ in range(scenario.tasks)]
        # The overruns go in among the first half: their recovery is slow, and should not all
        # come at the end.
        s = scenario
        self.plan = [f"e-{i}" for i in range(s.tasks)]
        for j in reversed(range(s.overruns)):
            self.plan.insert(int((j + 0.5) * s.tasks / 2 / s.overruns), f"o-{j}")

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # reported by the main loop, which stops the run
            self.error = exc

    def _feed(self) -> None:
        rate = self.scenario.rate
        per_batch = max(1, round(rate / 4)) if rate else 500
        began, sent = time.monotonic(), 0
        while sent < len(self.plan) and not self.stopping.is_set():
            if rate:
                self.stopping.wait(max(0.0, began + sent / rate - time.monotonic()))
            if self.plan[sent].startswith("o-"):
                key = self.plan[sent]
                self._send(lambda key=key: {key: self._overrun(key)})
                sent += 1
                continue
            batch = self.plan[sent : sent + per_batch]
            batch = list(itertools.takewhile(lambda k: k.startswith("e-"), batch))
            self._send(lambda batch=batch: self._effects(batch))
            sent += len(batch)

    def _overrun(self, key: str) -> TaskHandle[Any]:
        return submit(self.tasks.overrun, {"key": key, "ms": 0}, idempotency_key=key)

    def _effects(self, keys: list[str]) -> dict[str, TaskHandle[Any]]:
        payloads = [{"key": key, "ms": self.ms[int(key[2:])]} for key in keys]
        handles = submit_many(self.tasks.effect, payloads, idempotency_keys=keys)
        return dict(zip(keys, handles, strict=True))

    def _send(self, send: Any) -> None:
        while not self.stopping.is_set():
            try:
                self.handles.update(send())
                return
            except BROKER_ERRORS:
                self.retries += 1
                self.stopping.wait(0.2)


class Settlements:
    """When each key was first seen settled: a stored result (handle) or a dead letter."""

    def __init__(self, app: VoxFlow) -> None:
        self.store = DeadLetterStore(app.redis)
        self.at: dict[str, float] = {}
        self.dead: dict[str, str] = {}  # key -> dead letter id
        self._dead_count = -1

    def look(self, handles: dict[str, TaskHandle[Any]], among: Any = None) -> bool:
        """Look at the keys not settled yet (those in ``among``, if given); False when the
        broker did not answer."""
        now = time.time()
        try:
            if (count := self.store.count()) != self._dead_count:
                for letter in self.store.list(limit=count + 100):
                    key = letter.idempotency_key
                    if key and key not in self.dead:
                        self.dead[key] = letter.id
                        self.at.setdefault(key, now)
                self._dead_count = count
            for key, handle in list(handles.items()):
                looked_at = key not in self.at and (among is None or key in among)
                if looked_at and handle.status in SETTLED:
                    self.at[key] = now
        except BROKER_ERRORS:
            return False
        return True


# --- one scenario -----------------------------------------------------------------------


class Run:
    """One scenario, from its broker's start to its count; ``close`` leaves nothing behind."""

    def __init__(self, scenario: Scenario, root: Path, out: Any) -> None:
        self.s, self.root, self.out = scenario, root, out
        self.rng = random.Random(scenario.seed)
        self.server = RedisServer(root / "broker", appendfsync="always")
        self.workers: list[Worker] = []
        self.kills: list[Kill] = []
        self.exits: list[dict[str, Any]] = []
        self.app: VoxFlow | None = None
        self.feeder: Feeder | None = None
        self.effects = EffectsLog(root)
        (root / self.effects.markers.name).mkdir(parents=True)

    def say(self, text: str) -> None:
        print(f"[{self.s.name}] {text}", file=self.out, flush=True)

    def run(self) -> dict[str, Any]:
        """Run the scenario and return its figures."""
        began = time.monotonic()
        self.server.start()
        self.app = create_app(
            Settings(broker_url=self.server.url, result_backend=None, ignore_results=False,
                     task_modules=[], data_dir=self.root / "data")
        )  # fmt: skip
        tasks = register(self.app)
        for i in range(self.s.workers):
            env = worker_env(self.s, self.server.url, self.root, i)
            self.workers.append(Worker(i, worker_args(self.s, i), env, self.root / f"w{i}.log"))
            self.workers[-1].start()
        self._wait_ready(tasks)
        s = self.s
        self.say(
            f"{s.layout} x{s.workers} (-p/-c {s.processes}): {s.tasks} tasks + {s.overruns} "
            f"overruns {f'at {s.rate:g}/s' if s.rate else 'at once'}, a kill every "
            f"{s.kill_interval:g} s, {s.broker_restarts} broker restart(s)"
        )
        self.feeder = feeder = Feeder(self.s, tasks)
        settled = Settlements(self.app)
        chaos_began = time.monotonic()
        feeder.start()
        last_event = self._chaos(feeder, settled)
        chaos_seconds = time.monotonic() - chaos_began
        self.say(f"chaos over after {chaos_seconds:.0f} s; settling")
        deadline = last_event + self.s.settle_deadline
        while time.time() < deadline:
            self._watch()  # recovery needs live workers: restart any that exit
            if settled.look(feeder.handles) and all(k in settled.at for k in feeder.handles):
                break
            time.sleep(0.5)
        figures = self._count(feeder, settled, last_event)
        figures["chaos_seconds"] = round(chaos_seconds, 1)
        figures["seconds"] = round(time.monotonic() - began, 1)
        return figures

    def _wait_ready(self, tasks: ChaosTasks) -> None:
        """Until every worker has its children, and runs work (a run per child, not counted)."""
        deadline = time.monotonic() + 90
        while not all(
            w.process and len(children_of(w.process.pid)) >= self.s.processes for w in self.workers
        ):
            self._watch()
            if time.monotonic() > deadline:
                raise ChaosError(f"workers not started; see {self.root}/w*.log")
            time.sleep(0.2)
        keys = [f"warmup-{i}" for i in range(self.s.workers * self.s.processes)]
        payloads = [{"key": key, "ms": 200} for key in keys]
        for handle in submit_many(tasks.effect, payloads, idempotency_keys=keys):
            try:
                handle.result(timeout=max(1.0, deadline - time.monotonic()))
            except Exception as exc:
                raise ChaosError(f"the workers run nothing ({exc!r}); see {self.root}") from exc
        if self.exits:
            raise ChaosError(f"a worker exited while starting: {self.exits[0]}")

    def _chaos(self, feeder: Feeder, settled: Settlements) -> float:
        """Kill until the backlog is drained; returns the time of the last kill.

        The broker restarts come when (i + 0.5) / n of the work is done, whatever the speed
        of the machine. The kills stop once the backlog (keys with neither an effect nor a
        settlement) is down to 2 %, or has not shrunk for 20 s: kills can keep some of it up
        (a dead worker's prefetched messages wait for their lease)."""
        s = self.s
        total = s.tasks + s.overruns
        broker_at = [(i + 0.5) / s.broker_restarts for i in range(s.broker_restarts)]
        next_kill, next_look, kills = time.monotonic() + s.kill_interval, 0.0, 0
        last_event = time.time()
        smallest, shrunk_at = total, time.monotonic()
        while True:
            now = time.monotonic()
            if feeder.error is not None:
                raise ChaosError(f"the feeder failed: {feeder.error!r}") from feeder.error
            self._watch()
            if now >= next_kill:
                kills += 1
                supervisor = bool(s.supervisor_every) and kills % s.supervisor_every == 0
                last_event = self._kill(supervisor) or last_event
                next_kill = now + s.kill_interval
            if now >= next_look:
                next_look = now + 1.0
                self.effects.read()
                settled.look(feeder.handles, among=self.effects.runs)
                # A copy: the feeder adds to the handles meanwhile.
                done = sum(k in settled.at or k in self.effects.runs for k in list(feeder.handles))
                if total - done < smallest:
                    smallest, shrunk_at = total - done, now
                if broker_at and done / total >= broker_at[0]:
                    broker_at.pop(0)
                    last_event = self._restart_broker()
                    continue
                drained = total - done <= max(20, total // 50) or now - shrunk_at > 20
                if not feeder.is_alive() and drained and kills >= s.min_kills:
                    return last_event
            time.sleep(0.05)

    # -- what the killer does ------------------------------------------------------------
    def _watch(self) -> None:
        """Start workers due again; count and restart the ones that exited by themselves."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.start()
                continue
            code = worker.process.poll()
            if code is None or worker.killed:
                continue
            pid = worker.process.pid
            self.exits.append(
                {"worker": worker.index, "pid": pid, "code": code, "at": time.time(),
                 "log_tail": worker.tail()}
            )  # fmt: skip
            self.say(f"worker {worker.index} (pid {pid}) exited by itself with code {code}")
            worker.process, worker.restart_at = None, now + self.s.restart_after

    def _kill(self, supervisor: bool) -> float | None:
        """SIGKILL a random child, or a random supervisor; returns the kill's time."""
        live = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        targets = [(w, pid) for w in live for pid in children_of(w.process.pid)]  # type: ignore[union-attr]
        if not supervisor and targets:
            worker, pid = self.rng.choice(targets)
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.kill(pid, signal.SIGKILL)
            self.kills.append(Kill(time.time(), pid, "child", worker.index))
            return self.kills[-1].at
        if not live:
            return None
        worker = self.rng.choice(live)
        assert worker.process is not None
        pid, children = worker.process.pid, children_of(worker.process.pid)
        worker.killed = True
        os.kill(pid, signal.SIGKILL)
        at = time.time()
        worker.process.wait()
        self.kills.append(Kill(at, pid, "supervisor", worker.index))
        if self.s.layout == "prefork":
            # Pool processes get SIGKILL as their parent dies (Celery sets PDEATHSIG): by now.
            self.kills += [Kill(time.time(), c, "pool-orphan", worker.index) for c in children]
        worker.process, worker.restart_at = None, time.monotonic() + self.s.restart_after
        return at

    def _restart_broker(self) -> float:
        """SIGKILL the broker, wait ``broker_down``, start it again on its port and data."""
        assert self.server.process is not None
        pid = self.server.process.pid
        self.server.stop(signal.SIGKILL)
        self.kills.append(Kill(time.time(), pid, "broker"))
        time.sleep(self.s.broker_down)
        for tries_left in reversed(range(3)):
            try:
                self.server.start(timeout=30)
                break
            except Exception as exc:
                if not tries_left:
                    raise ChaosError(f"the broker did not start again: {exc}") from exc
                time.sleep(0.5)
        return time.time()

    # -- the count -----------------------------------------------------------------------
    def _count(self, feeder: Feeder, settled: Settlements, last_event: float) -> dict[str, Any]:
        """The scenario's figures, and up to 10 keys of each kind of failure as evidence."""
        self.effects.read()
        for _ in range(20):  # a last look; the broker is up, but may be busy a moment
            if settled.look(feeder.handles):
                break
            time.sleep(0.5)
        else:
            raise ChaosError("the broker does not answer; nothing could be counted")
        handles, runs = feeder.handles, self.effects.runs
        # New handles: a handle keeps the first ready state it saw, which may be stale now.
        status = {k: TaskHandle(h.app, h.id, h.output_model).status for k, h in handles.items()}
        dead = [k for k in settled.dead if k in handles and status[k] != TaskStatus.SUCCESS]
        failed = [k for k, v in status.items() if v == TaskStatus.FAILURE and k not in settled.dead]
        unsettled = [k for k in handles if k not in settled.at and status[k] not in SETTLED]
        killed = {k.pid: k.at for k in self.kills if k.role != "broker"}
        limit_killed, not_killed = self.effects.time_limit_kills()
        limit_killed = {pid: at for pid, at in limit_killed.items() if pid not in killed}
        duplicated = [k for k in handles if len(runs.get(k, ())) > 1]
        by_pid = self.effects.by_pid()
        window = [k for k in duplicated if in_window_of(runs[k], by_pid, killed, limit_killed)]
        groups = {
            "lost": [k for k in unsettled if k not in runs],
            "unsettled_after_effect": [k for k in unsettled if k in runs],
            "failed_without_dead_letter": failed,
            "duplicated_outside_window": [k for k in duplicated if k not in window],
        }
        figures: dict[str, Any] = {
            "name": self.s.name,
            "layout": self.s.layout,
            "submitted": len(handles),
            "succeeded": sum(v == TaskStatus.SUCCESS for v in status.values()),
            "dead_lettered": len(dead),
            "failed_without_dead_letter": len(failed),
            "lost": len(groups["lost"]),
            "unsettled_after_effect": len(groups["unsettled_after_effect"]),
            "duplicated_effects": len(duplicated),
            "duplicated_in_documented_window": len(window),
            "supervisor_exits": len(self.exits),
            "settle_seconds": round(
                max([0.0, *(at - last_event for at in settled.at.values())]), 1
            ),
            "kills": dict(Counter(k.role for k in self.kills)),
            "time_limit_kills": len(limit_killed),
            "overruns_not_killed": len(not_killed),
            "submit_retries": feeder.retries,
        }
        figures["ok"] = not violations(figures)
        kills = {k.pid: asdict(k) for k in self.kills}

        def facts(key: str) -> dict[str, Any]:
            handle = handles[key]
            out: dict[str, Any] = {"key": key, "task_id": handle.id, "status": status[key]}
            with contextlib.suppress(*BROKER_ERRORS):
                out["attempts"] = [
                    f"{a.number} {a.outcome} {a.node} {a.error_type or ''}".strip()
                    for a in handle.attempts()
                ]
            out["effects"] = [
                {"pid": pid, "at": at, "killed": kills.get(pid), "by_limit": pid in limit_killed}
                for pid, at in sorted(runs.get(key, []), key=lambda run: run[1])
            ]
            return out

        figures["evidence"] = {kind: [facts(k) for k in keys[:10]] for kind, keys in groups.items()}
        figures["evidence"]["supervisor_exits"] = self.exits[:10]
        return figures

    def close(self) -> None:
        """Stop every process this run started; close its clients."""
        if self.feeder is not None:
            self.feeder.stopping.set()
            self.feeder.join(10)
        for worker in self.workers:
            worker.stop_all()
        self.server.stop(signal.SIGKILL)  # nothing in it is kept
        if self.app is not None:
            self.app.redis.close()
            self.app.close()


CRITERIA: tuple[tuple[str, str, Callable[[dict[str, Any]], bool]], ...] = (
    ("lost", "== 0", lambda f: f["lost"] == 0),
    ("unsettled_after_effect", "== 0", lambda f: f["unsettled_after_effect"] == 0),
    ("failed_without_dead_letter", "== 0", lambda f: f["failed_without_dead_letter"] == 0),
    ("duplicated_effects", "== duplicated_in_documented_window",
     lambda f: f["duplicated_effects"] == f["duplicated_in_documented_window"]),
    ("supervisor_exits", "== 0", lambda f: f["supervisor_exits"] == 0),
    ("settle_seconds", f"<= {SETTLE_LIMIT:g}", lambda f: f["settle_seconds"] <= SETTLE_LIMIT),
)  # fmt: skip


def violations(figures: dict[str, Any]) -> list[str]:
    """The criteria ``figures`` break, each as ``name = value (want ...)``; none: it passed.

    The promise: nothing lost, left hanging or failed without a dead letter; duplicates only
    in the documented window; no worker process exiting by itself; everything settled within
    35 s of the last kill."""
    return [f"{name} = {figures[name]} (want {want})" for name, want, ok in CRITERIA
            if not ok(figures)]  # fmt: skip


def run_scenario(
    scenario: Scenario, keep: Path | None = None, out: Any = sys.stdout
) -> dict[str, Any]:
    """Run one scenario in a temp dir (kept under ``keep`` if given) and return its figures;
    every process it started is gone when it returns or raises."""
    scenario.check()
    root = Path(tempfile.mkdtemp(prefix=f"vf-chaos-{scenario.name}-", dir=keep))
    # Celery makes each new app the process's current one: give the caller's back after.
    previous = celery.current_app._get_current_object()  # type: ignore[attr-defined]
    run = Run(scenario, root, out)
    try:
        return run.run()
    finally:
        run.close()
        previous.set_current()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


TOTALS = (
    "submitted", "succeeded", "dead_lettered", "failed_without_dead_letter", "lost",
    "unsettled_after_effect", "duplicated_effects", "duplicated_in_documented_window",
    "supervisor_exits", "time_limit_kills", "overruns_not_killed", "submit_retries",
)  # fmt: skip


def totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The scenarios' figures summed (``settle_seconds``: the worst), with ``ok``."""
    out: dict[str, Any] = {name: sum(r[name] for r in results) for name in TOTALS}
    out["settle_seconds"] = max((r["settle_seconds"] for r in results), default=0.0)
    out["ok"] = all(r["ok"] for r in results)
    return out


# --- the command ------------------------------------------------------------------------


def _number(kind: type[int] | type[float], low: float, above: bool = False) -> Any:
    """An argparse type: a ``kind`` of at least ``low`` (over it, if ``above``)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            want = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}") from None
        if value < low or (above and value == low):
            raise argparse.ArgumentTypeError(
                f"{text} must be {'over' if above else 'at least'} {low:g}"
            )
        return value

    return parse


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios the command line asks for, with its overrides; ValueError names a bad
    option."""
    chosen = list(QUICK if args.quick else FULL)
    known = [s.name for s in chosen]
    if unknown := [name for name in args.scenario or () if name not in known]:
        raise ValueError(f"--scenario: no scenario {unknown[0]!r} here; there are {known}")
    options = ("tasks", "kill_interval", "broker_restarts", "rate", "settle_deadline")
    overrides = {k: getattr(args, k) for k in options if getattr(args, k) is not None}
    return [
        replace(s, seed=s.seed if args.seed is None else args.seed + i, **overrides)
        for i, s in enumerate(c for c in chosen if not args.scenario or c.name in args.scenario)
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up the way Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small scenarios (< 3 min)")
    parser.add_argument("--scenario", action="append", help="run only this one (repeatable)")
    add = parser.add_argument
    add("--tasks", type=_number(int, 1), help="keyed effect tasks per scenario")
    add("--kill-interval", type=_number(float, 0, above=True), help="seconds between kills")
    add("--broker-restarts", type=_number(int, 0), help="broker kills per scenario")
    add("--rate", type=_number(float, 0), help="submits per second (0: all at once)")
    add("--settle-deadline", type=_number(float, SETTLE_LIMIT, above=True),
        help="seconds to wait for the last keys after the last kill")  # fmt: skip
    add("--seed", type=int, help="random seed (scenario i uses seed + i)")
    parser.add_argument("--keep", action="store_true", help="keep logs and data; print where")
    args = parser.parse_args(argv)
    try:
        scenarios = scenarios_of(args)
        for scenario in scenarios:
            scenario.check()
    except ValueError as exc:
        parser.error(str(exc))
    keep = Path(tempfile.mkdtemp(prefix="vf-chaos-")) if args.keep else None
    signal.signal(signal.SIGTERM, _interrupt)
    results: list[dict[str, Any]] = []
    error = None
    try:
        for scenario in scenarios:
            figures = run_scenario(scenario, keep)
            report(figures)
            results.append(figures)
    except KeyboardInterrupt:
        print("interrupted: every process of the run is stopped", file=sys.stderr)
        return 130
    except ChaosError as exc:
        error = str(exc)
        print(f"chaos harness: {exc}", file=sys.stderr)
    out = totals(results)
    out["quick"] = args.quick
    out["scenarios"] = [{k: v for k, v in r.items() if k != "evidence"} for r in results]
    if keep is not None:
        out["kept"] = str(keep)
        (keep / "figures.json").write_text(json.dumps(results, indent=2))
    if error is not None:
        out["error"], out["ok"] = error, False
    print(json.dumps(out))
    return 0 if out["ok"] else 1


def report(figures: dict[str, Any]) -> None:
    """One line of figures for a scenario, then a line per kind of evidence it has."""
    shown = {k: v for k, v in figures.items() if k not in ("evidence", "name", "layout")}
    print(f"{figures['name']}: {json.dumps(shown)}", flush=True)
    for broken in violations(figures):
        print(f"  FAILED {broken}", flush=True)
    for kind, items in figures["evidence"].items():
        if items:
            print(f"  {kind}: {json.dumps(items)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
