"""`vox-flow` against a real broker: a closed stdout, an audited effect that fails after its
entry is recorded, a dry run that deletes nothing, and `vox-flow dev` naming its broker for
the commands run beside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tests.helpers import wait_for
from vox_flow.actions.perform import pending
from vox_flow.cli import common
from vox_flow.config import Settings
from vox_flow.contracts.task import DeadLetter, DeadLetterReason
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.keyspace import SCHED_STATE
from vox_flow.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = """
[[schedule]]
name = "tick"
cron = "*/5 * * * *"
task = "sample.count_words"
payload = { name = "doc", text = "a b c" }
"""


def env(data_dir: Path, broker_url: str | None, **settings: str) -> dict[str, str]:
    """A user's environment: no inherited VOX_FLOW_* variable but these."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    out.update(VOX_FLOW_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    if broker_url is not None:
        out["VOX_FLOW_BROKER_URL"] = broker_url
    out.update({f"VOX_FLOW_{k.upper()}": v for k, v in settings.items()})
    return out


def cli(
    data_dir: Path, broker_url: str | None, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vox_flow.cli", *args],
        env=env(data_dir, broker_url, **settings),
        cwd=data_dir.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def letter(days_ago: float = 0) -> DeadLetter:
    when = datetime.now(UTC) - timedelta(days=days_ago)
    letter_id = str(uuid.uuid4())
    return DeadLetter(
        id=letter_id,
        task_id=letter_id,
        task_name="sample.count_words",
        queue="celery",
        payload={"name": "d", "text": "x " * 20},
        reason=DeadLetterReason.EXHAUSTED,
        error_type="Transient",
        error_message="failed again and again, as a long message does",
        attempts=[],
        node="w1@test",
        dead_at=when,
    )


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_stops_early_ends_the_command_quietly(
    client: redis.Redis, redis_url: str, data_dir: Path, as_json: bool
) -> None:
    store = DeadLetterStore(client)
    pipe = client.pipeline()
    for _ in range(2000):  # far more than a pipe holds: the writer meets the closed end
        store.add(letter(), pipe)
    pipe.execute()
    command = [sys.executable, "-m", "vox_flow.cli", "dlq", "list", "--limit", "2000"]
    if as_json:
        command.append("--json")
    script = " ".join(command) + ' | head -c1 >/dev/null; echo "status ${PIPESTATUS[0]}"'
    done = subprocess.run(
        ["bash", "-c", script],
        env=env(data_dir, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == f"status {common.BROKEN_PIPE}\n", done.stdout + done.stderr
    assert done.stderr == ""


@pytest.fixture
def limited_url(client: redis.Redis, redis_url: str) -> Iterator[str]:
    """The broker as a user who may read and PING but not write: what an effect then fails
    on happens after the probe and after the audit entry is committed."""
    client.execute_command(
        "ACL", "SETUSER", "limited", "on", ">sesame", "~*", "&*", "+@connection", "+@read",
        "-@write",
    )  # fmt: skip
    yield redis_url.replace("redis://", "redis://limited:sesame@", 1)
    client.execute_command("ACL", "DELUSER", "limited")


def test_an_effect_that_fails_is_pending_and_says_so(
    client: redis.Redis, redis_url: str, limited_url: str, data_dir: Path
) -> None:
    schedules = data_dir.parent / "schedules"
    schedules.mkdir()
    (schedules / "tick.toml").write_text(SCHEDULE)
    settings = {"task_modules": "vox_flow.examples.sample", "schedules_dir": str(schedules)}

    done = cli(data_dir, limited_url, "schedules", "pause", "tick", "--reason", "r", **settings)
    assert done.returncode == common.PENDING, done.stderr
    shown = limited_url.replace(":sesame@", ":***@")
    assert done.stderr == (
        "error: audit entry 1 (schedule.pause tick) is signed and recorded, but its effect is "
        "pending: the leading `vox-flow control` (the audit outbox) will finish it within "
        "VOX_FLOW_CONTROL_OUTBOX_RETRY_SECONDS. It failed because: "
        f"the broker at {shown} refused a command: this user has no permissions to run the "
        "'evalsha' command\n"
    )
    store = open_store(Settings(data_dir=data_dir))
    try:
        assert pending(store) == [1]
    finally:
        store.dispose()
    assert client.hget(SCHED_STATE + "tick", "paused") is None  # the effect did not happen

    again = cli(data_dir, limited_url, "schedules", "resume", "tick", "--json", **settings)
    assert again.returncode == common.PENDING
    error = json.loads(again.stdout)["error"]
    assert error["code"] == "effect_pending" and "audit entry 2" in error["message"]


def test_a_dry_run_prunes_nothing_and_counts_what_pruning_then_deletes(
    client: redis.Redis, redis_url: str, data_dir: Path
) -> None:
    store = DeadLetterStore(client)
    old = [letter(days_ago=40) for _ in range(3)]
    for one in [*old, letter()]:
        store.add(one)
    # One audited purge, whose outbox row is done: backdated past the outbox's retention.
    purged = cli(data_dir, redis_url, "dlq", "purge", old[0].id, "--yes")
    assert purged.returncode == 0, purged.stderr
    control = open_store(Settings(data_dir=data_dir))
    try:
        with control.write() as conn:
            conn.exec_driver_sql("UPDATE audit_outbox SET updated_us = 0")
        with control.read() as conn:
            outbox_rows = conn.exec_driver_sql("SELECT count(*) FROM audit_outbox").scalar()
    finally:
        control.dispose()
    assert outbox_rows == 1

    dry = cli(data_dir, redis_url, "store", "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)["data"]
    assert counted == {
        "dry_run": True,
        "audit_entries": 0,
        "audit_outbox": 1,
        "ops": 0,
        "op_snapshots": 0,
        "dead_letters": 2,
    }
    assert store.count() == 3
    control = open_store(Settings(data_dir=data_dir))
    try:
        with control.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM audit_outbox").scalar() == 1
    finally:
        control.dispose()
    text = cli(data_dir, redis_url, "store", "prune", "--dry-run")
    assert text.stdout.startswith("would prune: 0 audit entries, 1 outbox rows"), text.stdout

    real = cli(data_dir, redis_url, "store", "prune", "--json")
    assert json.loads(real.stdout)["data"] == {**counted, "dry_run": False}
    assert store.count() == 1


def test_commands_beside_dev_use_its_broker_while_it_runs(
    redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "vox_flow.cli", "dev"],
            env=env(data_dir, redis_url, worker_processes="1"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    published = data_dir / "dev" / "broker_url"
    try:
        wait_for(lambda: "while dev runs" in log.read_text(), 30, "dev to name its broker")
        assert published.read_text() == f"{redis_url}\n"
        beside = cli(data_dir, None, "dlq", "list", "--json")
        assert beside.returncode == 0, beside.stderr
        assert beside.stderr == (
            f"using vox-flow dev's broker at {redis_url} (VOX_FLOW_BROKER_URL is unset)\n"
        )
        assert json.loads(beside.stdout)["total"] == 0
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()
    assert dev.returncode == 0, log.read_text()
    assert not published.exists()


def test_a_task_module_that_does_not_import_is_a_bad_setting(
    data_dir: Path, redis_url: str
) -> None:
    done = cli(data_dir, redis_url, "worker", "-p", "1", task_modules="no.such.module")
    assert done.returncode == common.REFUSED, done.stderr
    assert done.stderr.endswith(
        "error: VOX_FLOW_TASK_MODULES: cannot import 'no': No module named 'no'\n"
    )
    assert "Traceback" not in done.stdout + done.stderr


def test_a_store_url_whose_driver_is_missing_names_the_module(data_dir: Path) -> None:
    done = cli(data_dir, None, "audit", "keys", store_url="mysql://u:pw@127.0.0.1:1/x")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(
        "error: the store at mysql://u:***@127.0.0.1:1/x needs the Python module MySQLdb, "
        "which is not installed"
    )


def test_a_broker_that_is_not_redis_says_so(data_dir: Path) -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def answer_like_http() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(256)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer_like_http, daemon=True).start()
    url = f"redis://127.0.0.1:{port}/0"
    done = cli(data_dir, url, "dlq", "list")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(
        f"error: the broker at {url} did not answer as a Redis server would: Protocol Error"
    )
    assert "Traceback" not in done.stderr
