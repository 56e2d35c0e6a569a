"""Dead letters through the CLI, without a worker: refused replays (an invalid edit, a letter
already replayed, an oversized or non-strict payload), purge, list and show.

Replays that a worker runs are in tests/inprocess/test_deadletter.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import audit_entries, dead_letter
from tests.integration import tasks
from tests.integration.workers import run_cli
from vox_flow.actions.deadletters import PayloadTooLarge, replay_letter
from vox_flow.actions.perform import Auditor
from vox_flow.app import app
from vox_flow.config import Settings
from vox_flow.contracts.task import DeadLetter, DeadLetterState
from vox_flow.deadletters.replay import replay
from vox_flow.deadletters.store import DeadLetterStore
from vox_flow.errors import PayloadError
from vox_flow.keyspace import dlq_entry as entry_key


@pytest.fixture
def store(redis_url: str) -> DeadLetterStore:
    return DeadLetterStore(app.redis)


def _cli(redis_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``vox-flow dlq ARGS``."""
    return run_cli(redis_url, data_dir, "dlq", *args)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def _audit_actions(data_dir: Path) -> list[tuple[str, str]]:
    return [(e.action, e.target) for e in audit_entries(data_dir)]


# --- replay refused ---------------------------------------------------------------------------


def test_an_invalid_edit_is_refused_and_changes_nothing(
    store: DeadLetterStore, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    letter = dead_letter({"id": "i1", "value": 2}, task=tasks.broken)
    store.add(letter)
    before = app.redis.hgetall(entry_key(letter.id))

    with pytest.raises(PayloadError) as err:
        replay(app, letter.id, {"id": "i1", "value": -5})
    assert [field for field, _ in err.value.errors] == ["value"]

    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"id": "i1", "value": "lots"}))
    result = _cli(redis_url, data_dir, "replay", letter.id, "--payload", str(edit), "--json")
    assert result.returncode == 2, result.stderr
    error = _json(result)["error"]
    assert [f["field"] for f in error["fields"]] == ["value"]
    assert "value" in result.stderr and "nothing changed" in result.stderr

    assert app.redis.hgetall(entry_key(letter.id)) == before
    assert store.get(letter.id).state == DeadLetterState.DEAD
    assert app.redis.llen(tasks.broken.queue) == 0
    assert _audit_actions(data_dir) == []  # refused before anything was recorded


def test_a_replayed_letter_is_refused_and_nothing_is_recorded(
    store: DeadLetterStore, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """Before: the second replay, with another payload, did nothing, exited 0 and still
    appended a signed entry carrying the new payload: a replay that never ran."""
    letter = dead_letter({"id": "r1", "value": 2}, task=tasks.broken)
    store.add(letter)
    first = _cli(redis_url, data_dir, "replay", letter.id, "--json", "--reason", "fixed")
    assert first.returncode == 0, first.stderr
    task_id = _json(first)["data"]["task_id"]
    replayed = store.get(letter.id)
    assert replayed.state == DeadLetterState.REPLAYED and replayed.replayed_at is not None

    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"id": "r1", "value": 7}))
    for extra in (["--payload", str(edit)], []):
        again = _cli(redis_url, data_dir, "replay", letter.id, *extra, "--json")
        assert again.returncode == 2, again.stderr
        error = _json(again)["error"]
        assert error["code"] == "already_replayed"
        assert error["message"] == (
            f"refused, nothing recorded: dead letter {letter.id} was already replayed at "
            f"{replayed.replayed_at.isoformat()} as task {task_id}; a dead letter is replayed once"
        )
        assert "Traceback" not in again.stderr
    # One entry, the first replay's; one run enqueued, with the first payload.
    entries = audit_entries(data_dir)
    assert [(e.action, e.target, e.payload_data()) for e in entries] == [
        ("deadletter.replay", letter.id, {"payload": None})
    ]
    assert app.redis.llen(tasks.broken.queue) == 1
    assert store.replay_payload(letter.id) == {"id": "r1", "value": 2}


def test_a_begun_replay_is_finished_only_with_its_own_payload(
    store: DeadLetterStore, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """A replay cut short after its first step (state replaying) is finished by replaying
    again with the payload it began with; another payload is refused, nothing recorded."""
    letter = dead_letter({"id": "b1", "value": 2}, task=tasks.broken)
    store.add(letter)
    store.begin_replay(letter.id, "replay-b1", json.dumps({"id": "b1", "value": 2}))

    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"id": "b1", "value": 3}))
    other = _cli(redis_url, data_dir, "replay", letter.id, "--payload", str(edit), "--json")
    assert other.returncode == 2, other.stderr
    message = _json(other)["error"]["message"]
    assert f"a replay of dead letter {letter.id} with another payload is under way" in message
    assert "as task replay-b1" in message
    assert audit_entries(data_dir) == [] and app.redis.llen(tasks.broken.queue) == 0

    same = _cli(redis_url, data_dir, "replay", letter.id, "--json")
    assert same.returncode == 0, same.stderr
    assert _json(same)["data"] == {
        "id": letter.id,
        "task_id": "replay-b1",
        "started": False,
        "audit_seq": 1,
    }
    assert store.get(letter.id).state == DeadLetterState.REPLAYED
    assert app.redis.llen(tasks.broken.queue) == 1


def test_the_entry_carries_the_payload_as_validated_and_bounded(
    store: DeadLetterStore, redis_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """Before: extra fields, dropped by the input model, were kept whole in the entry (a
    10 MB string made a 10 MB entry), and a 401-digit integer gave a traceback."""
    letter = dead_letter({"id": "v1", "value": 0}, task=tasks.broken)
    store.add(letter)

    huge = tmp_path / "huge_int.json"
    huge.write_text('{"id": "v1", "value": ' + "9" * 401 + "}")
    refused = _cli(redis_url, data_dir, "replay", letter.id, "--payload", str(huge), "--json")
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert _json(refused)["error"]["fields"][0]["field"] == "--payload.value"

    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"id": "v1", "value": 5, "notes": "x" * 900_000}))
    done = _cli(redis_url, data_dir, "replay", letter.id, "--payload", str(edit), "--json")
    assert done.returncode == 0, done.stderr
    (entry,) = audit_entries(data_dir)
    assert entry.payload_data() == {"payload": {"id": "v1", "value": 5}}
    assert len(entry.payload) < 100

    # The Python API bounds what it records too: a valid payload larger than 1 MiB.
    big = dead_letter({"id": "v2", "value": 0}, task=tasks.broken)
    store.add(big)
    auditor = Auditor.open(Settings(data_dir=data_dir))
    try:
        with pytest.raises(PayloadTooLarge, match="more than the 1048576 bytes"):
            replay_letter(
                app, auditor, big.id, {"id": "y" * (1024 * 1024), "value": 1}, actor="a", reason="r"
            )
    finally:
        auditor.store.dispose()
    assert len(audit_entries(data_dir)) == 1
    assert store.get(big.id).state == DeadLetterState.DEAD


# --- purge -----------------------------------------------------------------------------------


def test_purge_one_and_all_needs_confirmation_and_is_audited(
    store: DeadLetterStore, redis_url: str, data_dir: Path
) -> None:
    letters = [dead_letter({"id": f"p{i}", "value": 0}, task=tasks.broken) for i in range(3)]
    for letter in letters:
        store.add(letter)

    refused = _cli(redis_url, data_dir, "purge", letters[0].id)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    refused_all = _cli(redis_url, data_dir, "purge", "--all")
    assert refused_all.returncode == 2 and store.count() == 3

    one = _cli(redis_url, data_dir, "purge", letters[0].id, "--yes", "--json", "--reason", "t")
    assert one.returncode == 0, one.stderr
    assert _json(one)["data"]["purged"] == [letters[0].id]
    assert store.count() == 2

    unknown = _cli(redis_url, data_dir, "purge", letters[0].id, "--yes")
    assert unknown.returncode == 1 and "no dead letter" in unknown.stderr

    every = _cli(redis_url, data_dir, "purge", "--all", "--yes", "--json")
    assert every.returncode == 0, every.stderr
    assert sorted(_json(every)["data"]["purged"]) == sorted(x.id for x in letters[1:])
    assert store.count() == 0 and not app.redis.exists(entry_key(letters[1].id))

    assert _audit_actions(data_dir) == [
        ("deadletter.purge", letters[0].id),
        ("deadletter.purge", "all"),
    ]


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_list_and_show(store: DeadLetterStore, redis_url: str, data_dir: Path) -> None:
    old = dead_letter({"id": "l1", "value": 0}, task=tasks.broken, minutes_ago=10)
    new = dead_letter({"id": "l2", "value": 0}, task=tasks.broken, minutes_ago=1)
    other = dead_letter({"id": "l3", "value": 0}, task=tasks.echo, minutes_ago=5)
    for letter in (old, new, other):
        store.add(letter)

    listed = _cli(redis_url, data_dir, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = _json(listed)["data"]
    assert [r["id"] for r in rows] == [new.id, other.id, old.id]  # newest first
    assert rows[0]["task"] == tasks.broken.name and rows[0]["state"] == "dead"
    assert rows[0]["reason"] == "exhausted" and rows[0]["error_type"] == "Transient"

    only = _json(_cli(redis_url, data_dir, "list", "--task", tasks.broken.name, "--limit", "1",
                      "--json"))["data"]  # fmt: skip
    assert [r["id"] for r in only] == [new.id]

    shown = _cli(redis_url, data_dir, "show", old.id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert DeadLetter.model_validate(_json(shown)["data"]) == old

    text = _cli(redis_url, data_dir, "show", old.id)
    assert "Transient: failed again" in text.stdout and "#1 failed" in text.stdout

    missing = _cli(redis_url, data_dir, "show", "no-such-id", "--json")
    assert missing.returncode == 1 and "no dead letter with id 'no-such-id'" in missing.stderr
    assert _json(missing)["error"]["code"] == "not_found"
