"""Dead letters through the CLI, without a worker: a refused edit, purge, list and show.

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
from vox_flow.app import app
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
