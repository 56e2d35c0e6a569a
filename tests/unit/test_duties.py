"""The control service runs its duties: hooks in order, no-op defaults, a failed duty ends the
term (and the service, unless it was fenced out). Fake duties and a real leader lock on the
session's private Redis whose clock the test holds, so the lock runs out only when told."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from vox_flow.actions import registry
from vox_flow.actions.perform import (
    Auditor,
    EffectFailed,
    Effects,
    pending,
    perform,
    resume_pending,
)
from vox_flow.actions.schedules import PAUSE, RESUME
from vox_flow.app import create_app
from vox_flow.config import Settings
from vox_flow.contracts.audit import AuditEntry
from vox_flow.control.duties import (
    CheckpointDuty,
    Duty,
    IngestDuty,
    OutboxDuty,
    Term,
    default_duties,
)
from vox_flow.control.service import FENCE_KEY, LOCK_KEY, ControlService
from vox_flow.leader import LeaderLock
from vox_flow.oplog.log import FencedOut
from vox_flow.schedules.store import ScheduleStore
from vox_flow.store import now_us

TTL = 30.0  # the lock's, on the test's own clock: it never runs out unless the test says so
WITHIN = 10.0  # how long a test waits for something that happens at once


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder(Duty):
    """Records its hooks in a shared journal; its run waits for the term to end."""

    def __init__(self, name: str, journal: list[str], *, wait: bool = True) -> None:
        self.name = name
        self.journal, self.wait = journal, wait
        self.running = threading.Event()
        self.terms: list[Term] = []

    def begin(self, term: Term) -> None:
        self.journal.append(f"begin {self.name} {term.token}")
        self.terms.append(term)

    def run(self, term: Term) -> None:
        self.journal.append(f"run {self.name}")
        self.running.set()
        if self.wait:
            assert term.ending.wait(WITHIN), "the term did not end"
            self.journal.append(f"ended {self.name}")

    def end(self, term: Term) -> None:
        self.journal.append(f"end {self.name}")


class Harness:
    """A ControlService with the given duties, its lock on a held clock, run in a thread."""

    def __init__(self, redis_url: str, data_dir: Path) -> None:
        settings = Settings(broker_url=redis_url, data_dir=data_dir, control_leader_ttl_seconds=1)
        self.app = create_app(settings)
        self.client = redis.Redis.from_url(redis_url)
        self.clock = Clock()
        self.lock = LeaderLock(
            self.client, TTL, lock_key=LOCK_KEY, fence_key=FENCE_KEY, monotonic=self.clock
        )
        self.services: list[ControlService] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, duties: list[Duty]) -> ControlService:
        service = ControlService(self.app, lock=self.lock, duties=duties)
        self.services.append(service)

        def run() -> None:
            try:
                assert service.run() == 0
            except BaseException as error:
                self.errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)
        return service

    def stop(self) -> None:
        for service in self.services:
            service.stop.set()
        assert self.ended() == []

    def ended(self) -> list[BaseException]:
        """What the services raised, once they all returned (without being told to)."""
        for thread in self.threads:
            thread.join(WITHIN)
            assert not thread.is_alive(), "the service did not stop"
        return self.errors

    def fence_in_store(self) -> int | None:
        with self.services[0].store.read() as conn:
            fence: int | None = conn.exec_driver_sql("SELECT fence FROM op_head").scalar_one()
        return fence


@pytest.fixture
def harness(redis_url: str, data_dir: Path) -> Iterator[Harness]:
    made = Harness(redis_url, data_dir)
    yield made
    for service in made.services:
        service.stop.set()
    for thread in made.threads:
        thread.join(WITHIN)
    made.client.close()


def _until(event: threading.Event, what: str) -> None:
    assert event.wait(WITHIN), f"timed out waiting for {what}"


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_default_duties_begin_outbox_then_ingest_and_run_checkpoints() -> None:
    assert [type(d) for d in default_duties()] == [OutboxDuty, IngestDuty, CheckpointDuty]
    assert [d.name for d in default_duties()] == ["outbox", "ingest", "checkpoints"]


def test_a_term_fences_begins_in_order_runs_then_ends_in_reverse(harness: Harness) -> None:
    journal: list[str] = []
    first, second = Recorder("a", journal), Recorder("b", journal)
    fenced_at_begin: list[int | None] = []

    class Fenced(Duty):
        def begin(self, term: Term) -> None:
            fenced_at_begin.append(harness.fence_in_store())

    service = harness.start([Fenced(), first, second])
    _until(first.running, "a to run")
    _until(second.running, "b to run")
    assert journal[:2] == ["begin a 1", "begin b 1"]  # every begin before any run
    assert sorted(journal[2:]) == ["run a", "run b"]
    assert fenced_at_begin == [1]  # the op-log was claimed before the first begin
    [term] = first.terms
    assert term.leading() and not term.ending.is_set()
    assert harness.client.exists(LOCK_KEY)

    harness.stop()
    assert term.ending.is_set()
    assert sorted(journal[4:6]) == ["ended a", "ended b"]  # every run returned first
    assert journal[6:] == ["end b", "end a"]
    assert not harness.client.exists(LOCK_KEY)  # released on the way out
    assert service.stop.is_set()


def test_the_hooks_do_nothing_by_default_and_a_run_that_returns_leaves_the_term_going(
    harness: Harness,
) -> None:
    journal: list[str] = []
    waiting = Recorder("waiting", journal)
    returning = Recorder("returning", journal, wait=False)
    bare = Duty()
    harness.start([bare, returning, waiting])
    _until(waiting.running, "the waiting duty to run")
    [term] = waiting.terms
    # The base class's hooks return at once, the term not ending (they ran in the term too).
    started = time.monotonic()
    bare.begin(term)
    bare.run(term)
    bare.end(term)
    assert time.monotonic() - started < 0.1
    assert not term.ending.wait(0.3)  # the bare and returning runs are over: the term goes on
    assert "end returning" not in journal
    harness.stop()
    assert journal[-3:] == ["ended waiting", "end waiting", "end returning"]


def test_a_duty_whose_run_fails_ends_the_term_and_the_service(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    journal: list[str] = []
    waiting = Recorder("waiting", journal)

    class Broken(Duty):
        name = "broken"

        def run(self, term: Term) -> None:
            _until(waiting.running, "the other duty to run")
            raise RuntimeError("the dispatcher's bug")

        def end(self, term: Term) -> None:
            journal.append("end broken")

    service = harness.start([waiting, Broken()])
    [error] = harness.ended()
    assert isinstance(error, RuntimeError) and str(error) == "the dispatcher's bug"
    assert journal == ["begin waiting 1", "run waiting", "ended waiting", "end broken",
                       "end waiting"]  # fmt: skip
    assert service.stop.is_set()
    assert not harness.client.exists(LOCK_KEY)  # a standby takes over at its next poll
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("the broken duty failed" in m and "stopping the service" in m for m in messages)


def test_a_duty_whose_begin_fails_ends_the_term_before_any_run(harness: Harness) -> None:
    journal: list[str] = []
    began, after = Recorder("began", journal), Recorder("after", journal)

    class StoreDown(Exception):
        pass

    class Broken(Duty):
        def begin(self, term: Term) -> None:
            raise StoreDown("store unreachable")

    harness.start([began, Broken(), after])
    [error] = harness.ended()
    assert isinstance(error, StoreDown)
    assert journal == ["begin began 1", "end began"]  # no run; only what began is ended
    assert not harness.client.exists(LOCK_KEY)


def test_fenced_out_from_begin_ends_the_term_raises_the_fence_and_leads_again(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vox_flow.control.service")
    journal: list[str] = []
    began, after = Recorder("began", journal), Recorder("after", journal)

    class FencedOnce(Duty):
        def __init__(self) -> None:
            self.terms = 0

        def begin(self, term: Term) -> None:
            self.terms += 1
            if self.terms == 1:
                raise FencedOut(term.token, latest=7)

    harness.start([began, FencedOnce(), after])
    _until(after.running, "the next term's duties to run")
    # The first term ended before any run and stood by; the next lock came with token 8.
    assert journal[:3] == ["begin began 1", "end began", "begin began 8"]
    assert int(harness.client.get(FENCE_KEY) or 0) == 8
    messages = [r.getMessage() for r in caplog.records]
    assert any("stepping down: op-log write refused: fencing token 1" in m for m in messages)
    assert any("stopped leading (token 1)" in m for m in messages)
    harness.stop()


def test_fenced_out_from_a_run_ends_the_term_and_the_replica_leads_again(
    harness: Harness,
) -> None:
    journal: list[str] = []
    waiting = Recorder("waiting", journal)

    class FencedOnce(Duty):
        def __init__(self) -> None:
            self.runs = 0

        def run(self, term: Term) -> None:
            self.runs += 1
            if self.runs == 1:
                _until(waiting.running, "the other duty to run")
                raise FencedOut(term.token, latest=4)

    harness.start([waiting, FencedOnce()])
    _eventually(lambda: len(waiting.terms) == 2, "the next term to begin")
    assert journal[:4] == ["begin waiting 1", "run waiting", "ended waiting", "end waiting"]
    assert journal[4] == "begin waiting 5"  # the fence was raised past the newer leader's
    assert waiting.terms[0].ending.is_set() and not waiting.terms[1].ending.is_set()
    harness.stop()


def test_a_lost_lock_ends_the_term_and_the_replica_stands_by(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vox_flow.control.service")
    journal: list[str] = []
    waiting = Recorder("waiting", journal)
    harness.start([waiting])
    _until(waiting.running, "the duty to run")
    [term] = waiting.terms
    harness.clock.now += TTL  # frozen past its TTL: the lock can no longer be trusted
    assert not term.leading()  # what the duties see at once, without a network call
    _until(term.ending, "the term to end")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    # It tries the lock again: Redis still holds it (its TTL runs on the server's clock).
    _eventually(lambda: any("standing by: the control" in m for m in messages()), "a standby")
    harness.stop()
    assert journal == ["begin waiting 1", "run waiting", "ended waiting", "end waiting"]
    assert "stepping down: the leader lock was lost" in messages()


def test_an_end_hook_that_fails_is_logged_and_the_others_still_run(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    journal: list[str] = []
    first = Recorder("first", journal)

    class Sloppy(Duty):
        name = "sloppy"

        def end(self, term: Term) -> None:
            raise RuntimeError("cannot tidy up")

    harness.start([first, Sloppy()])
    _until(first.running, "the duty to run")
    harness.stop()  # the service still stops cleanly, exit code 0
    assert journal[-1] == "end first"
    assert any("the sloppy duty failed to end its term" in r.getMessage() for r in caplog.records)


def _failed_pause(auditor: Auditor) -> AuditEntry:
    """Pause schedule "nightly" with an effect that fails: the entry stays, its row pending."""
    crashing = Effects()

    @crashing.outside(PAUSE)
    def _crash(entry: AuditEntry) -> None:
        raise ConnectionError("the broker went away")

    with pytest.raises(EffectFailed) as failed:
        perform(auditor.store, auditor.signer, crashing, actor="ann", action=PAUSE,
                target="nightly", reason="maintenance")  # fmt: skip
    return failed.value.entry


def test_the_outbox_duty_finishes_effects_left_pending_while_it_leads(
    harness: Harness, data_dir: Path
) -> None:
    journal: list[str] = []
    marker = Recorder("marker", journal)
    harness.start([OutboxDuty(every=0.05), marker])
    _until(marker.running, "every begin to have run")  # the term's own resume is over
    settings = Settings(broker_url=harness.app.conf.broker_url, data_dir=data_dir)
    auditor = Auditor.open(settings)
    schedules = ScheduleStore(harness.app.redis)
    try:
        _failed_pause(auditor)
        # No new term starts: only the duty's periodic retry can finish it.
        _eventually(
            lambda: pending(auditor.store) == [] and schedules.state("nightly").paused,
            "the pending pause to be finished",
        )
    finally:
        auditor.store.dispose()
    harness.stop()
    assert [line for line in journal if line.startswith("begin")] == ["begin marker 1"]


def test_an_outbox_retry_neither_runs_a_young_row_nor_undoes_a_later_action(
    harness: Harness, data_dir: Path
) -> None:
    # pause fails (its row stays pending), then resume succeeds: when the leader's retry
    # finally runs the old pause, the schedule must stay resumed.
    settings = Settings(broker_url=harness.app.conf.broker_url, data_dir=data_dir)
    auditor = Auditor.open(settings)
    schedules = ScheduleStore(harness.app.redis)
    try:
        seq = _failed_pause(auditor).seq
        # A retry only takes rows left alone for a whole period: this one is too young.
        assert pending(auditor.store, untouched_since_us=now_us() - 60_000_000) == []
        assert pending(auditor.store, untouched_since_us=now_us() + 1) == [seq]
        perform(auditor.store, auditor.signer, registry.effects(harness.app), actor="ann",
                action=RESUME, target="nightly", reason="done")  # fmt: skip
        assert not schedules.state("nightly").paused
        resumed = resume_pending(auditor.store, registry.effects(harness.app))
        assert resumed.done == [seq]  # the old pause ran, and changed nothing
        assert not schedules.state("nightly").paused
    finally:
        auditor.store.dispose()
