"""The control store on the real PostgreSQL server, in a fresh schema per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_audit_concurrency import pg_schema_url
from tests.unit.conftest_store import fill
from vox_flow.audit.keys import Signer
from vox_flow.audit.log import AuditLog, verify_inclusion_proof
from vox_flow.audit.verify import verify_store
from vox_flow.contracts.oplog import OpEvent, OpKind
from vox_flow.oplog.log import NewOp, OpLog
from vox_flow.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def store() -> Iterator[Store]:
    for url in pg_schema_url():
        pg = Store(url, checkpoint_every=10, snapshot_every=16)
        yield pg
        pg.dispose()


def test_audit_log_on_postgres(store: Store) -> None:
    signer = Signer.generate("control")
    fill(store, signer, 45, batch=7)
    log = AuditLog(store)
    assert [cp.size for cp in log.checkpoints()] == [10, 20, 30, 40]
    verify_inclusion_proof(log.inclusion_proof(13, 45), log.head().root_hash)
    assert verify_store(store).ok
    with store.write() as conn:
        conn.exec_driver_sql("UPDATE audit_entries SET target = 'x' WHERE seq = 31")
    report = verify_store(store)
    assert report.problem is not None and report.problem.seq == 31


def test_oplog_on_postgres(store: Store) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    log = OpLog(store)
    log.append_many([NewOp(OpKind.TASK, f"t{i}", OpEvent.SUBMITTED, {}, t0 + timedelta(seconds=i))
                     for i in range(50)])  # fmt: skip
    log.append(OpKind.TASK, "t3", OpEvent.SUCCEEDED, at=t0 + timedelta(seconds=60))
    assert len(log.state_at(t0 + timedelta(seconds=20)).tasks) == 21
    end = log.state_at(t0 + timedelta(seconds=61))
    assert len(end.tasks) == 49 and end.finished == {"succeeded": 1}
    with store.read() as conn:
        snapshots = conn.exec_driver_sql("SELECT op_seq FROM op_snapshots").scalars().all()
    assert list(snapshots) == [16, 32, 48]
