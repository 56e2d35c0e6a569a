"""The one DeadLetter builder, and the one definition of each Redis format (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from vox_flow.attempts import AttemptLog
from vox_flow.contracts.task import Attempt, AttemptOutcome, DeadLetter, DeadLetterReason
from vox_flow.deadletters.store import DeadLetterStore, build_letter

WHEN = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
LOST = Attempt(number=1, node="w1", started_at=WHEN, ended_at=WHEN, outcome=AttemptOutcome.LOST)


def letter(**overrides: object) -> DeadLetter:
    fields: dict[str, object] = {
        "task_id": "t-1",
        "task_name": "sample.resize",
        "queue": "vf.sample.resize",
        "payload": {"id": "a"},
        "reason": DeadLetterReason.LOST,
        "error_type": "WorkerLostError",
        "error_message": "worker process killed by SIGKILL",
        "attempts": [LOST],
        "node": "w1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "idempotency_key": "k-1",
        "dead_at": WHEN,
    } | overrides
    return build_letter(**fields)  # type: ignore[arg-type]


def test_a_letter_is_named_after_its_task_and_keeps_what_it_was_given() -> None:
    built = letter()
    assert built.id == built.task_id == "t-1"
    assert built.payload == {"id": "a"} and built.attempts == [LOST]
    assert built.state == "dead" and built.traceback is None and built.dead_at == WHEN
    assert DeadLetter.model_validate_json(built.model_dump_json()) == built


def test_a_payload_that_is_not_an_object_is_wrapped() -> None:
    assert letter(payload=[1, 2]).payload == {"value": [1, 2]}
    assert letter(payload=None).payload == {"value": None}


def test_dead_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    built = letter(dead_at=None)
    assert before <= built.dead_at <= datetime.now(UTC)


def test_a_letter_is_written_set_if_absent_under_its_id() -> None:
    built = letter()
    assert DeadLetterStore.writes(built) == [
        ("HSETNX", "vf:dlq:t-1", "entry", built.model_dump_json()),
        ("HSETNX", "vf:dlq:t-1", "state", "dead"),
        ("ZADD", "vf:dlq:index", "NX", repr(WHEN.timestamp()), "t-1"),
    ]


def test_an_attempt_is_appended_and_its_list_expires() -> None:
    log = AttemptLog(redis.Redis.from_url("redis://127.0.0.1:1/0"), ttl=600)  # never connected
    assert log.writes("t-1", LOST) == [
        ("RPUSH", "vf:attempts:t-1", LOST.model_dump_json()),
        ("EXPIRE", "vf:attempts:t-1", "600"),
    ]
