"""Op-log fencing on SQLite and the real PostgreSQL: a write carrying an older leader's token
is refused and writes nothing, also when it waited on the head lock the new leader held."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.integration.test_audit_concurrency import PG_ADMIN, pg_schema_url
from vox_flow.contracts.oplog import OpEvent, OpKind
from vox_flow.oplog.log import FencedOut, NewOp, OpLog
from vox_flow.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = Store(f"sqlite:///{tmp_path / 'control.db'}", snapshot_every=16)
        yield opened
        opened.dispose()
    else:
        url = request.getfixturevalue("pg_url")
        opened = Store(url, snapshot_every=16)
        yield opened
        opened.dispose()


def _ops(n: int, prefix: str) -> list[NewOp]:
    return [NewOp(OpKind.TASK, f"{prefix}{i}", OpEvent.RECEIVED) for i in range(n)]


def _head(store: Store) -> tuple[int, int | None]:
    with store.read() as conn:
        row = conn.execute(text("SELECT seq, fence FROM op_head WHERE id = 1")).one()
    return row[0], row[1]


def test_an_older_token_is_refused_and_writes_nothing(store: Store) -> None:
    log = OpLog(store)
    log.append_many(_ops(3, "old"), fence=7)
    log.fence(8)  # a new leader claims the log
    with pytest.raises(FencedOut, match="token 7 is older than 8"):
        log.append_many(_ops(20, "late"), fence=7)  # crosses a snapshot boundary too
    assert _head(store) == (3, 8)
    assert [op.subject for op in log.ops()] == ["old0", "old1", "old2"]
    with store.read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM op_snapshots")).scalar_one() == 0
    log.append_many(_ops(2, "new"), fence=8)
    log.append_many(_ops(1, "tool"))  # no token: a tool or test, never refused
    assert _head(store) == (6, 8)


@pytest.mark.postgres
def test_a_write_waiting_on_the_head_lock_is_refused_once_a_newer_leader_commits(
    pg_url: str,
) -> None:
    # The deposed leader's append queues behind the new leader's claim; the token is checked
    # only once it holds the lock, so it sees the claim and writes nothing.
    store = Store(pg_url)
    admin = create_engine(PG_ADMIN)
    try:
        log = OpLog(store)
        log.append_many(_ops(1, "a"), fence=1)
        outcome: list[BaseException | None] = []

        def deposed() -> None:
            try:
                log.append_many(_ops(5, "late"), fence=1)
                outcome.append(None)
            except BaseException as error:  # handed to the test thread
                outcome.append(error)

        with store.write() as conn:
            holder = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            conn.execute(text("SELECT seq FROM op_head WHERE id = 1 FOR UPDATE"))
            conn.execute(text("UPDATE op_head SET fence = 2 WHERE id = 1"))
            thread = threading.Thread(target=deposed)
            thread.start()
            deadline = time.monotonic() + 30
            with admin.connect() as watch:
                while not watch.execute(
                    text(
                        "SELECT COUNT(*) FROM pg_stat_activity "
                        "WHERE :holder = ANY(pg_blocking_pids(pid))"
                    ),
                    {"holder": holder},
                ).scalar_one():
                    assert time.monotonic() < deadline, "the append never queued"
                    assert thread.is_alive(), f"the append did not wait: {outcome}"
                    time.sleep(0.02)
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], FencedOut), outcome
        assert _head(store) == (1, 2)
        assert [op.subject for op in log.ops()] == ["a0"]
    finally:
        store.dispose()
        admin.dispose()
