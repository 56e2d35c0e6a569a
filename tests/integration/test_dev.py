"""`vox-flow dev` on a fresh machine: embedded broker, worker, sample; stops what it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.workers import ROOT
from vox_flow.broker.server import RedisServer


def _dev_env(data_dir: Path) -> dict[str, str]:
    """No VOX_FLOW_BROKER_URL (so dev starts its embedded broker), a fresh data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    env.update(
        VOX_FLOW_DATA_DIR=str(data_dir),
        VOX_FLOW_WORKER_PROCESSES="1",  # the machine is small and shared
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


def _started_by(data_dir: Path) -> dict[int, str]:
    """Live processes dev started (pid: cmdline): those that inherited this test's data dir,
    and those working in it (valkey-server overwrites its environ with its process title,
    but it runs in its --dir)."""
    marker = f"VOX_FLOW_DATA_DIR={data_dir}".encode()
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            inherited = marker in (proc / "environ").read_bytes().split(b"\0")
            if not inherited and not Path(os.readlink(proc / "cwd")).is_relative_to(data_dir):
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped by its parent
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        found[int(proc.name)] = cmdline
    return found


def _start(data_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vox_flow.cli", "dev", *args],
            env=_dev_env(data_dir),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait_for(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, f"dev exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()}"
        time.sleep(0.1)


def _kinds(processes: dict[int, str]) -> set[str]:
    kinds = set()
    for cmdline in processes.values():
        if "valkey-server" in cmdline:
            kinds.add("broker")
        elif "celery" in cmdline and " worker" in cmdline:
            kinds.add("celery worker")
        elif "vox_flow.cli worker" in cmdline:
            kinds.add("supervisor")
    return kinds


def test_dev_once_runs_the_sample_on_an_embedded_broker_and_leaves_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    log = tmp_path / "dev.log"
    dev = _start(data_dir, log, "--once")
    seen: dict[int, str] = {}
    while dev.poll() is None:
        seen.update(_started_by(data_dir))
        time.sleep(0.05)
    output = log.read_text()

    assert dev.returncode == 0, output
    assert "broker: embedded Valkey" in output and "appendfsync always" in output
    assert "sample result: 25 words in 3 documents" in output
    assert "celery -A vox_flow.app --broker=redis://127.0.0.1:" in output and "flower" in output
    assert {"broker", "supervisor", "celery worker"} <= _kinds(seen), seen
    assert list((data_dir / "broker").glob("appendonlydir/*.aof")), "no AOF in the data dir"
    assert _started_by(data_dir) == {}


def test_sigint_stops_everything_dev_started_and_nothing_else(
    tmp_path: Path, data_dir: Path, redis_server: RedisServer
) -> None:
    log = tmp_path / "dev.log"
    dev = _start(data_dir, log)
    try:
        _wait_for(log, "press Ctrl-C", dev, timeout=120)
        running = _started_by(data_dir)
        assert {"broker", "supervisor", "celery worker"} <= _kinds(running), running
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0, log.read_text()
    finally:
        if dev.poll() is None:  # a failed assertion: still stop what dev started
            dev.terminate()
            try:
                dev.wait(60)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
    assert "SIGINT: stopping" in log.read_text()
    assert _started_by(data_dir) == {}
    assert redis_server.process is not None and redis_server.process.poll() is None
