"""What Flower, unmodified, shows of a ``vox-flow worker`` while a run is in progress.

A solo child's event loop is blocked while its task runs; Celery sends task events and worker
heartbeats from that loop, so without vox_flow's liveness (vox_flow/_celery/liveness.py) a
running task showed ``PENDING`` with no worker until it ended, and a child busy for more than
two heartbeat periods showed offline. Everything here is read from Flower's own HTTP API:
``/api/task/info/<id>``, ``/api/tasks``, ``/workers?json=1`` and ``/metrics``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.integration import tasks
from tests.integration.conftest import StartWorker
from tests.integration.workers import ROOT, vox_flow_worker_args, worker_env
from vox_flow.app import app
from vox_flow.broker.server import free_port
from vox_flow.submit import submit

RUN_SECONDS = 10.0
EXECUTING = "flower_worker_number_of_currently_executing_tasks"


class Flower:
    """A real Flower process (``celery -A vox_flow.app flower``) on the test broker."""

    def __init__(self, redis_url: str, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        args = [
            sys.executable, "-m", "celery", "-A", "vox_flow.app", f"--broker={redis_url}",
            "flower", "--address=127.0.0.1", f"--port={self.port}",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            # Loopback only, and a throwaway broker: the API may go without authentication.
            env={**worker_env(redis_url, data_dir), "FLOWER_UNAUTHENTICATED_API": "true"},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            body: bytes = reply.read()
        return body

    def json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"flower exited: {self.log_path.read_text()[-3000:]}")
        try:
            return self.get("/healthcheck") == b"OK"
        except (urllib.error.URLError, ConnectionError):
            return False

    def workers(self) -> dict[str, dict[str, Any]]:
        """Flower's workers page as JSON: name -> fields (``status`` is whether it is online)."""
        return {w["hostname"]: w for w in self.json("/workers?json=1")["data"]}

    def executing(self, worker: str) -> float | None:
        """The executing-tasks gauge of ``worker`` in ``/metrics`` (None: not reported)."""
        text = self.get("/metrics").decode()
        match = re.search(rf'^{EXECUTING}{{worker="{re.escape(worker)}"}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def flower(redis_url: str, data_dir: Path, tmp_path: Path) -> Iterator[Flower]:
    process = Flower(redis_url, data_dir, tmp_path / "flower.log")
    try:
        wait_for(process.up, 30, "flower to answer")
        yield process
    finally:
        process.stop()


@dataclass
class Sample:
    at: float  # wall-clock time of the sample
    state: str | None
    worker: str | None
    online: bool
    executing: float | None


def _sample(flower: Flower, task_id: str, worker: str) -> Sample:
    at = time.time()
    try:
        info = flower.json(f"/api/task/info/{task_id}")
    except urllib.error.HTTPError as err:
        assert err.code == 404, err  # Flower has not heard of the task yet
        info = {}
    return Sample(
        at,
        info.get("state"),
        info.get("worker"),
        bool(flower.workers().get(worker, {}).get("status")),
        flower.executing(worker),
    )


def _started_at(task_id: str) -> float:
    """When the task's function began: ``slow`` notes ``"<pid> <time.time()>"`` first thing."""
    note = wait_for(lambda: app.redis.lindex(f"test:slow-start:{task_id}", 0), 30, "the run")
    return float(note.split()[1])


@pytest.mark.slow
def test_flower_sees_a_long_run_started_on_its_worker_which_stays_online(
    redis_url: str, flower: Flower, start_worker: StartWorker
) -> None:
    start_worker("w1", args=vox_flow_worker_args(processes=1))
    # The supervised child's hostname, as Flower learnt it from the child's worker-online.
    [worker] = wait_for(
        lambda: [name for name, w in flower.workers().items() if w.get("status")],
        30,
        "flower to see the worker online",
    )
    assert worker.startswith("vf1"), worker  # the first (only) child
    handle = submit(tasks.slow, {"id": "f", "seconds": RUN_SECONDS})

    samples: list[Sample] = []
    while True:  # every 0.1 s until the task shows STARTED, then every 0.5 s to its end
        samples.append(sample := _sample(flower, handle.id, worker))
        if sample.state == "SUCCESS" or time.time() - samples[0].at > RUN_SECONDS + 30:
            break
        time.sleep(0.5 if any(s.state == "STARTED" for s in samples) else 0.1)
    began = _started_at("f")
    ended = began + RUN_SECONDS
    seen = "\n".join(  # what each sample saw, for the failure message
        f"{s.at - began:+6.2f}s {s.state} on {s.worker} online={s.online} executing={s.executing}"
        for s in samples
    )

    # STARTED, on the child that runs it, within 1 s of the function's start.
    first = next((s for s in samples if s.state == "STARTED"), None)
    assert first is not None, seen
    assert first.worker == worker and first.at < began + 1.0, seen
    info = flower.json(f"/api/task/info/{handle.id}")
    assert info["worker"] == worker and info["started"] <= began + 0.1, info
    assert handle.id in flower.json(f"/api/tasks?workername={worker}")
    # Online throughout the run, with one task executing (the gauge comes from heartbeats,
    # so give the first heartbeat of the run its interval).
    during = [s for s in samples if began <= s.at <= ended]
    assert len(during) >= RUN_SECONDS / 0.6, seen
    assert all(s.online for s in during), seen
    assert all(s.state == "STARTED" for s in during if first.at <= s.at < ended - 0.2), seen
    assert all(s.executing == 1 for s in during if began + 1.0 <= s.at < ended - 0.5), seen

    # Afterwards: the result once, as the JSON text the result backend stores.
    assert handle.result(timeout=10).value == int(RUN_SECONDS)
    stored = app.AsyncResult(handle.id).result
    done = wait_for(
        lambda: (i := flower.json(f"/api/task/info/{handle.id}"))["state"] == "SUCCESS" and i,
        10,
        "flower to see the task succeed",
    )
    assert done["result"] == stored and json.loads(done["result"])["output"] == {
        "id": "f",
        "value": int(RUN_SECONDS),
    }, done["result"]
    assert flower.workers()[worker]["status"]
