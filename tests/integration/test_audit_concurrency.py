"""Real processes appending at once get one valid chain; SIGKILL mid-append loses nothing
acknowledged. On SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.integration.workers import ROOT
from vox_flow.audit.keys import key_path, load_or_create
from vox_flow.audit.log import AuditLog
from vox_flow.audit.verify import verify_store
from vox_flow.store import Store

pytestmark = pytest.mark.integration
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# One appender process: registers its own key, appends COUNT entries one by one and prints
# each sequence number only after perform() returned (= acknowledged).
APPENDER = """
import sys
from pathlib import Path
from vox_flow.actions.perform import Effects, perform
from vox_flow.audit.log import AuditLog
from vox_flow.audit.keys import load_or_create
from vox_flow.store import Store
url, key, count, synchronous = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
store = Store(url, checkpoint_every=25, sqlite_synchronous=synchronous)
signer = load_or_create(key, key.stem)
AuditLog(store).register(signer)
effects = Effects()
effects.in_store("test.note")(lambda conn, entry: None)
print("ready", flush=True)
i = 0
while count < 0 or i < count:
    entry = perform(store, signer, effects, actor=key.stem, action="test.note",
                    target=str(i), reason="concurrency", payload={"i": i})
    print(entry.seq, flush=True)
    i += 1
"""


def pg_schema_url() -> Iterator[str]:
    """A store URL on a fresh, uniquely named PostgreSQL schema, dropped afterwards."""
    engine = create_engine(PG_ADMIN)
    try:
        with engine.begin() as conn:
            schema = f"vf_test_{uuid.uuid4().hex[:12]}"
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is unreachable ({error}); tests/run starts it")
    try:
        yield f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'control.db'}"
    else:
        yield from pg_schema_url()


def _spawn(
    url: str, key: Path, count: int, synchronous: str = "before_output"
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, url, str(key), str(count), synchronous],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def test_parallel_writers_make_one_chain(store_url: str, tmp_path: Path) -> None:
    Store(store_url).dispose()  # migrate once up front; writers also race to migrate safely
    writers, each = 3, 40
    procs = [_spawn(store_url, key_path(tmp_path, f"node{i}"), each) for i in range(writers)]
    acked: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        acked += [int(line) for line in out.split()[1:]]
    store = Store(store_url)
    report = verify_store(store)
    assert report.ok, report.problem
    assert report.entries == writers * each
    assert sorted(acked) == list(range(1, writers * each + 1))  # no seq given twice
    owners = {e.actor for e in AuditLog(store).entries()}
    assert owners == {f"node{i}" for i in range(writers)}
    store.dispose()


def test_sigkill_mid_append_loses_nothing_acknowledged(store_url: str, tmp_path: Path) -> None:
    sigkill_mid_append(store_url, tmp_path, "before_output")


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_sigkill_mid_append_in_the_other_sqlite_modes(tmp_path: Path, synchronous: str) -> None:
    """The modes differ only on power loss, never on a killed process's commits."""
    sigkill_mid_append(f"sqlite:///{tmp_path / 'control.db'}", tmp_path, synchronous)


def sigkill_mid_append(store_url: str, tmp_path: Path, synchronous: str) -> None:
    """Kill an appending process mid-append; every acknowledged entry is there, chain intact."""
    Store(store_url).dispose()
    key = key_path(tmp_path, "victim")
    load_or_create(key, "victim")
    proc = _spawn(store_url, key, -1, synchronous)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    acked: list[int] = []
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)  # lands in the middle of some append
    proc.wait(10)
    acked += [int(line) for line in proc.stdout.read().split()]
    store = Store(store_url)
    report = verify_store(store)
    assert report.ok, report.problem
    assert len(acked) >= 150
    assert report.entries >= acked[-1]  # every acknowledged entry is there, without a gap
    assert acked == list(range(1, len(acked) + 1))
    load_or_create(key, "victim")  # the key survives too
    store.dispose()
