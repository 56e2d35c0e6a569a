"""The effects of the chaos harness (bench/chaos.py): the tasks that do them, and their log.

Tasks (registered on an app by :func:`register`):

* ``bench.chaos.effect`` sleeps 5-20 ms, then appends ``key pid time task`` to the effects
  log: one line per run of its effect, whichever process runs it;
* ``bench.chaos.overrun``, on its first run for a key, writes a marker file (its pid and the
  time) and sleeps past its hard time limit, so that the run is killed; the next run of the key
  finds the marker and does its effect. A first run that is not killed in time goes on and does
  the effect itself (:func:`time_limit_kills` tells it apart).

The log and the markers live in the directory named by ``VF_CHAOS_DIR``, read when a task
runs. A worker imports this module through ``VOX_FLOW_TASK_MODULES`` with ``VF_CHAOS_DIR``
set, and the tasks are registered on its app then; the harness registers them on its own apps
(importing the module there registers nothing). The harness reads the log back with
:class:`EffectsLog`, and :func:`in_window_of` decides whether a key's repeated effect is the
one that docs/guarantees.md allows.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from vox_flow.application import VoxFlow
from vox_flow.retry import RetryPolicy
from vox_flow.tasks import TypedTask, typed_task

DIR_ENV = "VF_CHAOS_DIR"
EFFECTS = "effects.log"
MARKERS = "markers"

EFFECT_TASK = "bench.chaos.effect"
OVERRUN_TASK = "bench.chaos.overrun"
OVERRUN_LIMIT = 2.0  # seconds: the overrun task's hard time limit
OVERRUN_SLEEP = 3 * OVERRUN_LIMIT  # its first run sleeps this long, well past the limit


class Job(BaseModel):
    key: str = Field(min_length=1, pattern=r"^\S+$")  # one field of a log line
    ms: int = Field(default=10, ge=0, le=60_000)


class Done(BaseModel):
    key: str
    pid: int


def _dir() -> Path:
    value = os.environ.get(DIR_ENV)
    if not value:
        raise RuntimeError(f"{DIR_ENV} is not set: the chaos tasks have nowhere to log effects")
    return Path(value)


def log_effect(key: str, task: str) -> None:
    """Append this run's effect line: one ``write`` on an O_APPEND file, so lines written by
    concurrent processes never interleave, and a line is whole once the call returned."""
    line = f"{key} {os.getpid()} {time.time():.6f} {task}\n".encode()
    fd = os.open(_dir() / EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def effect(job: Job) -> Done:
    """Work for ``job.ms`` milliseconds, then do the effect."""
    time.sleep(job.ms / 1000)
    log_effect(job.key, EFFECT_TASK)
    return Done(key=job.key, pid=os.getpid())


def overrun(job: Job) -> Done:
    """First run of a key: mark it, then sleep past the hard time limit; later runs: the effect."""
    marker = _dir() / MARKERS / job.key
    try:
        # O_EXCL: of two first runs at once, only one is the first.
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, f"{os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)
        time.sleep(OVERRUN_SLEEP)  # the hard time limit should kill this process meanwhile
    log_effect(job.key, OVERRUN_TASK)
    return Done(key=job.key, pid=os.getpid())


@dataclass(frozen=True)
class ChaosTasks:
    """The two chaos tasks as registered on one app."""

    effect: TypedTask[Job, Done]
    overrun: TypedTask[Job, Done]


def register(app: VoxFlow) -> ChaosTasks:
    """Register the chaos tasks on ``app``."""
    return ChaosTasks(
        effect=typed_task(app, name=EFFECT_TASK)(effect),
        overrun=typed_task(
            app,
            name=OVERRUN_TASK,
            time_limit=OVERRUN_LIMIT,
            # The killed first run uses one attempt; leave room for a chaos kill or two.
            retry=RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=1.0),
        )(overrun),
    )


# --- reading it back --------------------------------------------------------------------


class EffectsLog:
    """The effect lines of one run's directory, read as they come: ``runs[key]`` is the list
    of (pid, time) of every run of the key's effect."""

    def __init__(self, root: Path) -> None:
        self.path = root / EFFECTS
        self.markers = root / MARKERS
        self.runs: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._offset = 0

    def read(self) -> None:
        """Take in the lines written since the last call (whole lines only)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        for line in whole.decode().splitlines():
            key, pid, at, _task = line.split()
            self.runs[key].append((int(pid), float(at)))

    def by_pid(self) -> dict[int, list[float]]:
        """The times of every effect line, by the pid that wrote it."""
        out: dict[int, list[float]] = defaultdict(list)
        for runs in self.runs.values():
            for pid, at in runs:
                out[pid].append(at)
        return out

    def time_limit_kills(self) -> tuple[dict[int, float], list[str]]:
        """From the overrun markers: the processes the hard time limit killed (pid -> start of
        the run it killed), and the keys whose first run was not killed (it did the effect)."""
        killed: dict[int, float] = {}
        not_killed: list[str] = []
        for marker in self.markers.iterdir() if self.markers.exists() else ():
            pid_text, at_text = marker.read_text().split()
            pid, at = int(pid_text), float(at_text)
            if any(p == pid and t >= at for p, t in self.runs.get(marker.name, [])):
                not_killed.append(marker.name)
            elif not _alive(pid):
                killed[pid] = at
        return killed, not_killed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def in_window_of(
    runs: list[tuple[int, float]],
    by_pid: dict[int, list[float]],
    killed: dict[int, float],
    limit_killed: dict[int, float],
) -> bool:
    """Whether every run of a key but the last (``runs``: pid, effect time) was cut off
    between its effect and its completion, the limit docs/guarantees.md states.

    That is: its process was SIGKILLed (``killed``: pid -> time of the kill) after the effect,
    and that effect was the process's last before the kill (a worker process runs one task at
    a time, so a later effect means this run had completed); or the hard time limit killed the
    process (``limit_killed``: pid -> start of the run it killed) and the effect is that run's.
    """
    for pid, at in sorted(runs, key=lambda run: run[1])[:-1]:
        own = by_pid.get(pid, [])
        if pid in killed:
            if at >= killed[pid] or at != max(t for t in own if t < killed[pid]):
                return False
        elif pid in limit_killed:
            if at < limit_killed[pid] or at != max(own):
                return False
        else:
            return False
    return True


if os.environ.get(DIR_ENV):
    # A chaos worker (its environment names the directory): register on the worker's app.
    import vox_flow.app

    TASKS = register(vox_flow.app.app)
