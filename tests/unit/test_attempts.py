"""The attempt log's buffer: records taken out by the result's write, handed back on failure
(no broker: a client double stands in for Redis)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from vox_flow.attempts import AttemptLog
from vox_flow.contracts.task import Attempt, AttemptOutcome

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def attempt(number: int, outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED) -> Attempt:
    return Attempt(number=number, node="w1", started_at=WHEN, ended_at=WHEN, outcome=outcome)


class Pipeline:
    """A pipeline double: records commands; ``execute`` waits for ``gate`` when given."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.commands: list[tuple[Any, ...]] = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def execute_command(self, *command: Any) -> None:
        self.commands.append(command)

    def execute(self) -> None:
        self.client.executing.set()
        if self.client.gate is not None:
            assert self.client.gate.wait(10)
        self.client.sent += self.commands


class Client:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.executing = threading.Event()
        self.sent: list[tuple[Any, ...]] = []

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)


def test_take_returns_one_task_s_records_and_leaves_the_others_buffered() -> None:
    client = Client()
    log = AttemptLog(client, 60)  # type: ignore[arg-type]
    log.record_soon("t1", attempt(1))
    log.record_soon("t2", attempt(1))
    log.record_soon("t1", attempt(2))
    taken = log.take("t1")
    assert [Attempt.model_validate_json(r).number for r in taken] == [1, 2]
    assert log.writes_of("t1", taken) == [
        ("RPUSH", "vf:attempts:t1", taken[0]),
        ("EXPIRE", "vf:attempts:t1", "60"),
        ("RPUSH", "vf:attempts:t1", taken[1]),
        ("EXPIRE", "vf:attempts:t1", "60"),
    ]
    assert log.take("t1") == []
    log.flush()
    assert [c[1] for c in client.sent if c[0] == "RPUSH"] == ["vf:attempts:t2"]
    log.put_back("t1", taken)  # their write failed: the next flush writes them, in order
    log.flush()
    assert [c[2] for c in client.sent if c[1] == "vf:attempts:t1" and c[0] == "RPUSH"] == taken


def test_take_waits_for_a_flush_that_is_writing_the_task_s_records() -> None:
    """The keeper's flush took t1's record a moment before the result's write asked for it:
    the write must not go ahead (and the caller see a result without its attempt) until the
    flush has written it."""
    gate = threading.Event()
    client = Client(gate)
    log = AttemptLog(client, 60)  # type: ignore[arg-type]
    log.record_soon("t1", attempt(1))
    flusher = threading.Thread(target=log.flush)
    flusher.start()
    assert client.executing.wait(10)  # the flush is on the wire
    taken: list[list[str]] = []
    taker = threading.Thread(target=lambda: taken.append(log.take("t1")))
    taker.start()
    taker.join(0.2)
    assert taker.is_alive() and client.sent == []  # waiting for the flush
    gate.set()
    flusher.join(10)
    taker.join(10)
    assert taken == [[]] and len(client.sent) == 2  # written by the flush, not taken twice
