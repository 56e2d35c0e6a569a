"""Benchmark of the audit log and op-log (not a test). Last line: one JSON object.

    python bench/audit.py [--quick] [--no-postgres]

Signed appends/s on one process (unbatched: one perform() per entry, a commit each;
batched: perform_many of 100) of an action whose effect is in the store, on SQLite in each
synchronous mode (before_output, the default; full; normal) and on PostgreSQL; the same
for an action with an outside effect (its commit fsynced, then the effect, then its outbox
row marked done: two commits); verify entries/s (every hash and every Ed25519 signature:
verify_store with its worker processes, and on one core); state_at latency over a history
of 10^6 ops (--quick: 2*10^5, reported). Also what bounds them on this machine: the extra
time of a FULL commit over a NORMAL one (its fsync), one Ed25519 verify, and the load
average at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from vox_flow.actions.perform import Action, Effects, perform, perform_many
from vox_flow.audit.keys import Signer, signature_ok
from vox_flow.audit.log import AuditLog
from vox_flow.audit.verify import verify_store
from vox_flow.contracts.oplog import OpEvent, OpKind
from vox_flow.oplog.log import NewOp, OpLog
from vox_flow.store import Store

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NOTE = "bench.note"  # in-store effect
SENT = "bench.sent"  # outside effect (a no-op: what is measured is the log's part)


def _effects() -> Effects:
    effects = Effects()
    effects.in_store(NOTE)(lambda conn, entry: None)
    effects.outside(SENT)(lambda entry: None)
    return effects


def appends(store: Store, unbatched: int, batched: int, action: str = NOTE) -> tuple[float, float]:
    signer, effects = Signer.generate("bench"), _effects()
    AuditLog(store).register(signer)
    start = time.perf_counter()
    for i in range(unbatched):
        perform(store, signer, effects, actor="bench", action=action, target=f"t{i}",
                reason="benchmark", payload={"i": i})  # fmt: skip
    one = unbatched / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in range(batched // 100):
        actions = [Action("bench", action, f"b{b}-{i}", "bench", {"i": i}) for i in range(100)]
        perform_many(store, signer, effects, actions)
    many = (batched // 100 * 100) / (time.perf_counter() - start)
    return one, many


def verify_rate(store: Store, workers: int | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    report = verify_store(store, workers=workers)
    elapsed = time.perf_counter() - start
    assert report.ok, report.problem
    return report.entries / elapsed, report.entries


def ed25519_verify_us(count: int = 2000) -> float:
    """One Ed25519 verification (PyNaCl), the bulk of verify's work per entry."""
    signer = Signer.generate("probe")
    message = b"m" * 300
    public, signature = signer.public_key, signer.sign(message)
    start = time.perf_counter()
    for _ in range(count):
        signature_ok(public, message, signature)
    return (time.perf_counter() - start) / count * 1e6


def oplog_history(store: Store, size: int) -> tuple[datetime, datetime, float]:
    """``size`` ops: tasks submitted/started/retried/finished, ~200 in flight, 20 nodes."""
    rng = random.Random(7)
    log = OpLog(store)
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    live: list[str] = []
    made = 0
    start = time.perf_counter()
    batch: list[NewOp] = []
    while made < size:
        at = t0 + timedelta(milliseconds=made)
        roll = rng.random()
        if roll < 0.005:
            event = rng.choice([OpEvent.JOINED, OpEvent.LEFT, OpEvent.PAUSED, OpEvent.RESUMED])
            batch.append(NewOp(OpKind.NODE, f"node{rng.randrange(20)}", event, {}, at))
        elif len(live) < 200 and (roll < 0.4 or not live):
            live.append(f"task{made}")
            batch.append(NewOp(OpKind.TASK, live[-1], OpEvent.SUBMITTED, {"name": "job"}, at))
        else:
            task = live[rng.randrange(len(live))]
            event = rng.choice([OpEvent.STARTED, OpEvent.RETRIED, OpEvent.SUCCEEDED,
                                OpEvent.SUCCEEDED, OpEvent.FAILED])  # fmt: skip
            if event in (OpEvent.SUCCEEDED, OpEvent.FAILED):
                live.remove(task)
            batch.append(NewOp(OpKind.TASK, task, event, {"node": "node1"}, at))
        made += 1
        if len(batch) == 20_000:
            log.append_many(batch)
            batch = []
    if batch:
        log.append_many(batch)
    return t0, t0 + timedelta(milliseconds=size), time.perf_counter() - start


def state_at_ms(store: Store, t0: datetime, t1: datetime, probes: int = 50) -> float:
    log = OpLog(store)
    rng = random.Random(3)
    span = (t1 - t0) / timedelta(milliseconds=1)
    times = []
    for _ in range(probes):
        when = t0 + timedelta(milliseconds=rng.uniform(0, span))
        start = time.perf_counter()
        log.state_at(when)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def pg_store() -> tuple[Store, str]:
    schema = f"vf_bench_{uuid.uuid4().hex[:8]}"
    with create_engine(PG).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    return Store(f"{PG}?options=-csearch_path%3D{schema}"), schema


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    unbatched, batched = (2_000, 10_000) if args.quick else (10_000, 100_000)
    history = 200_000 if args.quick else 1_000_000
    out: dict[str, float | int | str] = {"load_avg_1m": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        out["ed25519_verify_us"] = ed25519_verify_us()
        default = Store(f"sqlite:///{Path(tmp) / 'default.db'}")
        out["appends_per_s"], out["appends_batched_per_s"] = appends(default, unbatched, batched)
        one, many = appends(default, unbatched, batched, SENT)
        out["appends_per_s_outside_effect"], out["appends_batched_per_s_outside_effect"] = (
            one,
            many,
        )
        for mode in ("full", "normal"):
            store = Store(f"sqlite:///{Path(tmp) / mode}.db", sqlite_synchronous=mode)
            one, many = appends(store, unbatched, batched)
            out[f"appends_per_s_sqlite_{mode}"] = one
            out[f"appends_batched_per_s_sqlite_{mode}"] = many
            store.dispose()
        out["full_commit_extra_us"] = 1e6 / float(out["appends_per_s_sqlite_full"]) - 1e6 / float(
            out["appends_per_s_sqlite_normal"]
        )
        out["verify_per_s"], out["verify_entries"] = verify_rate(default)
        out["verify_per_s_one_core"] = verify_rate(default, workers=1)[0]
        ops = Store(f"sqlite:///{Path(tmp) / 'ops.db'}")
        t0, t1, build = oplog_history(ops, history)
        out["state_at_ms"] = state_at_ms(ops, t0, t1)
        out["state_at_history_ops"] = history
        out["oplog_bulk_ops_per_s"] = history / build
    if not args.no_postgres:
        store, schema = pg_store()
        try:
            one, many = appends(store, unbatched // 2, batched // 2)
            out["appends_per_s_postgres"], out["appends_batched_per_s_postgres"] = one, many
            out["appends_per_s_postgres_outside_effect"] = appends(
                store, unbatched // 2, 100, SENT
            )[0]
            out["verify_per_s_postgres"] = verify_rate(store)[0]
        finally:
            store.dispose()
            with create_engine(PG).begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    out["mode"] = "quick" if args.quick else "full"
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
