"""The worker runtime: one per (process, app), one keeper thread, one fork reset (no broker).

The apps here name a Redis port nothing listens on and never send a command: each runtime's
steps run against stores whose methods the tests replace, or against a fake clock.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from vox_flow.app import create_app
from vox_flow.application import VoxFlow
from vox_flow.attempts import FLUSH_SECONDS
from vox_flow.config import Settings
from vox_flow.worker.lease import LeaseKeeper
from vox_flow.worker.runslot import Run, RunSlot
from vox_flow.worker.runtime import LIVENESS_TICK, Keeper, Step, WorkerRuntime

NOWHERE = "redis://127.0.0.1:1/{db}"  # never connected to: nothing here sends a command


def app_on(db: int, **settings: Any) -> VoxFlow:
    return create_app(Settings(broker_url=NOWHERE.format(db=db), **settings))


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(calls: list[str], name: str) -> Callable[[], None]:
    return lambda: calls.append(name)


def test_each_step_runs_at_its_own_interval() -> None:
    clock, calls = Clock(), []  # type: ignore[var-annotated]
    keeper = Keeper(
        [Step("fast", 1.0, counting(calls, "fast")), Step("slow", 2.5, counting(calls, "slow"))],
        clock=clock,
    )
    assert keeper.run_due() == 1.0 and calls == []  # nothing is due at once
    for _ in range(6):
        clock.now += 1.0
        keeper.run_due()
    # "slow" is due 2.5 s after it last ran: at 2.5 (run at 3) and 5.5 (run at 6).
    assert calls == ["fast", "fast", "fast", "slow", "fast", "fast", "fast", "slow"]
    assert keeper.until_due() == 1.0


def test_a_failing_step_is_logged_then_quiet_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, calls = Clock(), []  # type: ignore[var-annotated]
    broken = True

    def flaky() -> None:
        if broken:
            raise ConnectionError("redis down")

    keeper = Keeper(
        [Step("flaky", 1.0, flaky), Step("steady", 1.0, counting(calls, "steady"))],
        clock=clock,
        report_every=10.0,
    )
    with caplog.at_level(logging.WARNING, logger="vox_flow.worker.runtime"):
        for _ in range(25):
            clock.now += 1.0
            keeper.run_due()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        # Failures 1, 11 and 21 are logged, each with its traceback; the other 22 are not.
        assert [r.getMessage().split(" (")[1] for r in errors] == [
            "1 time(s) in a row); trying again every 1s",
            "11 time(s) in a row); trying again every 1s",
            "21 time(s) in a row); trying again every 1s",
        ]
        assert all(r.exc_info and r.exc_info[0] is ConnectionError for r in errors)
        assert calls == ["steady"] * 25
        caplog.clear()
        broken = False
        clock.now += 1.0
        keeper.run_due()
        assert [r.getMessage() for r in caplog.records] == ["flaky works again after 25 failure(s)"]
        caplog.clear()
        broken = True
        clock.now += 1.0
        keeper.run_due()  # a new run of failures is logged at once
        assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_the_keeper_thread_outlives_a_step_that_always_fails() -> None:
    reached = threading.Event()
    calls: list[str] = []

    def steady() -> None:
        calls.append("steady")
        if len(calls) == 3:
            reached.set()

    def broken() -> None:
        raise RuntimeError("always")

    keeper = Keeper([Step("broken", 0.001, broken), Step("steady", 0.001, steady)])
    logging.getLogger("vox_flow.worker.runtime").disabled = True  # the failures are expected
    try:
        keeper.start()
        assert reached.wait(5), "the steady step stopped running"
        assert keeper.alive
    finally:
        keeper.stop()
        logging.getLogger("vox_flow.worker.runtime").disabled = False
    assert not keeper.alive


def test_a_lease_keeper_reaps_at_its_interval_and_never_after_a_failed_renewal() -> None:
    clock, calls = Clock(), []  # type: ignore[var-annotated]
    leases = LeaseKeeper(app_on(0, reaper_interval_seconds=5), lambda: [], clock=clock)
    renew_fails = False

    def renew() -> int:
        calls.append("renew")
        if renew_fails:
            raise ConnectionError("redis down")
        return 0

    leases.renew = renew  # type: ignore[method-assign]
    leases.reap = lambda: calls.append("reap") or 0  # type: ignore[method-assign]
    for _ in range(3):  # every 2 s, as with lease_renew_seconds=2
        leases.keep()
        clock.now += 2.0
    assert calls == ["renew", "reap", "renew", "renew"]
    calls.clear()
    renew_fails = True
    with pytest.raises(ConnectionError):
        leases.keep()  # the reap was due: skipped, this worker's own leases may be stale
    assert calls == ["renew"]


def test_one_runtime_per_app_each_on_its_own_app_s_redis() -> None:
    first, second = app_on(1), app_on(2)
    runtime = WorkerRuntime.of(second)
    assert WorkerRuntime.of(second) is runtime
    assert WorkerRuntime.of(first) is not runtime
    assert runtime.app is second
    assert runtime.attempts.client is runtime.idempotency.client is second.redis
    assert runtime.dead_letters.client is second.redis
    assert WorkerRuntime.of(first).idempotency.client is first.redis
    assert not hasattr(second, "_vf_runtime") and not hasattr(second, "slot_writer")


def test_a_run_s_claim_is_renewed_by_its_own_app_s_runtime_only() -> None:
    """The two-app bug, without a broker: the keeper of the app that runs a keyed task
    renews its claim, on that app's store, every lease_renew_seconds."""
    fast = {"lease_seconds": 4, "lease_renew_seconds": 0.5}
    # The runtimes hold their apps weakly: the test holds them, as a worker holds its app.
    apps = app_on(3, **fast), app_on(4, **fast)
    first, second = WorkerRuntime.of(apps[0]), WorkerRuntime.of(apps[1])
    gc.collect()  # an app nobody held would be gone here, whenever the collector ran
    renewed: list[tuple[str, dict[str, str], float]] = []

    def recorder(name: str) -> Callable[[dict[str, str], float], None]:
        def renew(claims: dict[str, str], lease: float) -> None:
            # Only the fake-clock rounds below: running() also starts the real keeper thread.
            if threading.current_thread() is threading.main_thread():
                renewed.append((name, claims, lease))

        return renew

    first.idempotency.renew = recorder("first")  # type: ignore[method-assign]
    second.idempotency.renew = recorder("second")  # type: ignore[method-assign]
    clock = Clock()
    keepers = [Keeper(first.steps(), clock=clock), Keeper(second.steps(), clock=clock)]
    with second.running("charge-1", "run-a"):
        assert second.held_claims() == {"charge-1": "run-a"} and first.held_claims() == {}
        for _ in range(4):
            clock.now += 0.25
            for keeper in keepers:
                keeper.run_due()
    assert renewed == [("second", {"charge-1": "run-a"}, 4.0)] * 2
    assert second.held_claims() == {}
    with second.running(None, ""):  # a run without a key holds nothing
        assert second.held_claims() == {}
    second.stop()  # running() started its keeper thread


def test_the_keeper_flushes_buffered_attempts_and_keeps_attached_leases() -> None:
    app = app_on(5, lease_renew_seconds=1)  # held: the runtime holds its app weakly
    runtime = WorkerRuntime.of(app)
    flushed: list[int] = []
    runtime.attempts.flush = lambda: flushed.append(1)  # type: ignore[method-assign]
    kept: list[int] = []
    leases = cast("LeaseKeeper", SimpleNamespace(keep=lambda: kept.append(1)))
    clock = Clock()
    keeper = Keeper(runtime.steps(), clock=clock)
    clock.now += 1.0
    keeper.run_due()
    assert (len(flushed), kept) == (1, [])  # no consumer attached: no lease work
    runtime._leases = leases  # what attach() sets, without starting the thread
    clock.now += 1.0
    keeper.run_due()
    assert kept == [1]
    clock.now += FLUSH_SECONDS
    keeper.run_due()
    assert (len(flushed), kept) == (3, [1])


def test_the_keeper_keeps_an_attached_liveness_every_tick_until_it_is_detached() -> None:
    app = app_on(8)  # held: the runtime holds its app weakly
    runtime = WorkerRuntime.of(app)
    kept: list[int] = []
    runtime._liveness = SimpleNamespace(keep=lambda: kept.append(1))  # type: ignore[assignment]
    clock = Clock()
    keeper = Keeper(runtime.steps(), clock=clock)
    for _ in range(4):
        clock.now += LIVENESS_TICK
        keeper.run_due()
    assert len(kept) == 4
    assert keeper.until_due() <= LIVENESS_TICK  # a blocked loop is looked at within a tick
    runtime.detach_liveness()
    clock.now += LIVENESS_TICK
    keeper.run_due()
    assert len(kept) == 4
    runtime._liveness = SimpleNamespace(keep=lambda: kept.append(1))  # type: ignore[assignment]
    runtime._reset()  # what a forked child does: its parent's consumer is not its own
    clock.now += LIVENESS_TICK
    keeper.run_due()
    assert len(kept) == 4


def test_the_run_slot_reports_the_messages_the_attached_consumer_holds(tmp_path: Path) -> None:
    app = app_on(6)  # held: the runtime holds its app weakly
    runtime = WorkerRuntime.of(app)
    runtime.run_started("t0", "n", 1.0, 2.0)  # no slot in this process: nothing to report
    reader = RunSlot(tmp_path / "0.slot", create=True)  # the supervisor creates it
    runtime.open_slot(tmp_path / "0.slot")
    held = {"tag-1": SimpleNamespace(headers={"id": "t1"}), "tag-2": SimpleNamespace(headers={})}
    runtime._held = held  # what attach() sets, without starting the thread
    runtime.run_started("t1", "sample.run", 1.0, 30.0)
    assert reader.read() == Run("t1", "tag-1", "sample.run", 1.0, 30.0, ["tag-1", "tag-2"])
    del held["tag-1"]
    runtime.run_finished()
    assert reader.read() == Run(held=["tag-2"])
    reader.close()


def test_a_forked_child_holds_nothing_of_its_parent_and_rebuilds_lazily() -> None:
    app = app_on(7, lease_seconds=60, lease_renew_seconds=30)  # a keeper that stays quiet
    runtime = WorkerRuntime.of(app)
    parent_attempts = runtime.attempts
    read, write = os.pipe()
    with runtime.running("charge-2", "run-b"):
        assert runtime.alive
        pid = os.fork()
        if pid == 0:  # the child: report, and leave without running pytest's teardown
            code = 1
            try:
                os.close(read)
                seen = {
                    "same_runtime": WorkerRuntime.of(app) is runtime,
                    "claims": runtime.held_claims(),
                    "alive": runtime.alive,
                    "new_stores": runtime.attempts is not parent_attempts,
                    "new_client": runtime.attempts.client is app.redis
                    and app.redis is not parent_attempts.client,
                }
                os.write(write, json.dumps(seen).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            seen = json.loads(pipe.read())
        assert os.waitpid(pid, 0)[1] == 0
        assert seen == {
            "same_runtime": True,
            "claims": {},
            "alive": False,
            "new_stores": True,
            "new_client": True,
        }
        # The parent keeps what it held.
        assert runtime.held_claims() == {"charge-2": "run-b"} and runtime.alive
        assert runtime.attempts is parent_attempts
    runtime.stop()
