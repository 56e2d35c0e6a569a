"""Real vox_flow subprocesses for tests: `celery worker` / `vox-flow worker`, and the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[2]
_PROBE = "test-eventlog-probe"


def worker_env(redis_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """Environment for a vox_flow process talking to the test broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    env.update(
        VOX_FLOW_BROKER_URL=redis_url,
        VOX_FLOW_DATA_DIR=str(data_dir),
        VOX_FLOW_TASK_MODULES="tests.integration.tasks",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update({f"VOX_FLOW_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class WorkerProcess:
    """One worker process group; ``kill`` sends SIGKILL to all of it (parent and children)."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log: BinaryIO | None = field(default=None, repr=False)

    def start(self, ready_timeout: float = 30.0) -> WorkerProcess:
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() takes its children too
        )
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready: {self.output()[-3000:]}")
            time.sleep(0.1)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.log is not None:
            self.log.close()
            self.log = None

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):  # stray children of the group
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.log is not None:
            self.log.close()
            self.log = None


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and its children: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def celery_worker_args(name: str, pool: str = "solo", concurrency: int = 1) -> list[str]:
    """``celery -A vox_flow.app worker`` exactly as a user runs it."""
    return [
        sys.executable, "-m", "celery", "-A", "vox_flow.app", "worker",
        "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h", "-l", "info",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def run_cli(
    redis_url: str, data_dir: Path, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``vox-flow ARGS`` as an operator runs it (stdin is not a terminal), to its end;
    ``settings`` as for :func:`worker_env`."""
    return subprocess.run(
        [sys.executable, "-m", "vox_flow.cli", *args],
        env=worker_env(redis_url, data_dir, **settings),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def vox_flow_worker_args(processes: int = 2) -> list[str]:
    """``vox-flow worker``: the supervised per-core layout."""
    return [sys.executable, "-m", "vox_flow.cli", "worker", "-p", str(processes), "-l", "info"]


class EventLog:
    """Celery events of some types, collected by a receiver thread (as Flower gets them)."""

    def __init__(self, types: tuple[str, ...]) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(types,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self, types: tuple[str, ...]) -> None:
        # Imported here: conftest imports this module before the session's broker is set.
        from vox_flow.app import app

        handlers: dict[str, Any] = {t: self.events.append for t in types}
        handlers[_PROBE] = lambda event: self._ready.set()
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers=handlers)
            # Events are pub/sub: report ready only once the subscription exists. Kombu
            # subscribes in the first drain, so probe until our own event comes back.
            with receiver.consumer_context(wakeup=False) as (conn, _, _):
                prober = app.events.Dispatcher(conn, buffer_while_offline=False)
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)
                    if not self._ready.is_set():
                        prober.send(_PROBE)

    def tasks(self) -> list[str]:
        return [event.get("uuid", "") for event in self.events]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
