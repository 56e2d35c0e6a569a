"""Schedule files: a corpus of bad files, each failing with its file, schedule, field, reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vox_flow.app import app
from vox_flow.schedules.loader import ScheduleFileError, load_dir, load_file

CORPUS = Path(__file__).parent / "schedule_corpus"
ROOT = Path(__file__).resolve().parents[2]

# file -> (schedule, field, reason); a reason ending in "..." is a prefix
EXPECTED = {
    "bad_toml.toml": (None, None, "invalid TOML: ..."),
    "bad_json.json": (
        None,
        None,
        "invalid JSON at line 1: Expecting property name enclosed in ...",
    ),
    "unknown_top_key.toml": (
        None,
        "schedules",
        "unknown top-level key 'schedules'; schedules go in [[schedule]]",
    ),
    "empty.toml": (None, "schedule", "no schedules: expected a non-empty list under 'schedule'"),
    "bad_cron.toml": ("bad-cron", "cron", "'61 * * * *' is not a valid cron expression"),
    "bad_alias.toml": ("bad-alias", "cron", "unknown alias '@fortnightly'; known: @yearly, ..."),
    "bad_timezone.toml": ("bad-zone", "timezone", "'Europe/Atlantis' is not an IANA time zone"),
    "unknown_task.toml": (
        "no-such-task",
        "task",
        "no typed task named 'sample.count_letters'; known: ...",
    ),
    "bad_payload.toml": ("bad-payload", "payload.text", "Field required"),
    "unknown_field.toml": ("extra-field", "overlapp", "unknown field"),
    "bad_policy.toml": (
        "bad-policy",
        "missed_run",
        "Input should be 'skip', 'run_once' or 'catch_up'",
    ),
    "duplicate_name.toml": ("twice", "name", "defined twice in this file"),
    "end_before_start.toml": ("backwards", None, "end must be after start"),
    "missing_name.json": ("#1", "name", "Field required"),
    "negative_jitter.json": (
        "jittery",
        "jitter_seconds",
        "Input should be greater than or equal to 0",
    ),
}


def test_every_corpus_file_has_an_expectation() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_names_file_schedule_field_and_reason(name: str) -> None:
    schedule, field, reason = EXPECTED[name]
    with pytest.raises(ScheduleFileError) as caught:
        load_file(app, CORPUS / name)
    error = caught.value
    assert error.file == CORPUS / name
    assert (error.first.schedule, error.first.field) == (schedule, field)
    if reason.endswith("..."):
        assert error.first.reason.startswith(reason[:-3])
    else:
        assert error.first.reason == reason
    assert str(CORPUS / name) in str(error)


def test_bad_files_do_not_stop_good_ones(tmp_path: Path) -> None:
    shutil.copy(ROOT / "schedules" / "sample.toml", tmp_path / "a_good.toml")
    for name in ("bad_cron.toml", "bad_payload.toml"):
        shutil.copy(CORPUS / name, tmp_path / name)
    loaded = load_dir(app, tmp_path)
    assert sorted(loaded.definitions) == ["count-words-hourly", "count-words-nightly"]
    assert sorted(e.file.name for e in loaded.errors) == ["bad_cron.toml", "bad_payload.toml"]
    # A bad file loads nothing, not even its good schedules.
    assert "ok-one" not in loaded.definitions


def test_a_name_taken_by_an_earlier_file_fails_the_later_file(tmp_path: Path) -> None:
    shutil.copy(ROOT / "schedules" / "sample.toml", tmp_path / "a.toml")
    shutil.copy(ROOT / "schedules" / "sample.toml", tmp_path / "b.toml")
    loaded = load_dir(app, tmp_path)
    assert set(loaded.files.values()) == {tmp_path / "a.toml"}
    (error,) = loaded.errors
    assert error.file == tmp_path / "b.toml"
    assert error.first.field == "name"
    assert error.first.reason == "already defined in a.toml"


def test_the_shipped_examples_load() -> None:
    loaded = load_dir(app, ROOT / "schedules")
    assert loaded.errors == []
    assert loaded.definitions


def test_overlap_policies_need_task_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vox_flow.examples.sample import count_words

    path = tmp_path / "fire_and_forget.toml"
    path.write_text(
        '[[schedule]]\nname = "nightly"\ncron = "@daily"\ntimezone = "UTC"\n'
        'task = "sample.count_words"\noverlap = "skip"\n'
        'payload = { name = "n", text = "t" }\n'
    )
    assert [s.name for s in load_file(app, path)] == ["nightly"]  # results are on
    monkeypatch.setattr(count_words.celery_task, "ignore_result", True)
    with pytest.raises(ScheduleFileError) as err:
        load_file(app, path)
    assert (err.value.first.schedule, err.value.first.field) == ("nightly", "overlap")
    assert "needs task results" in err.value.first.reason
