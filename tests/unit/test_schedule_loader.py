"""Schedule files: a corpus of bad files, each failing with its file, schedule, field, reason."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vox_flow.app import app
from vox_flow.schedules import loader
from vox_flow.schedules.cron import Cron
from vox_flow.schedules.loader import ScheduleFileError, load_dir, load_file

CORPUS = Path(__file__).parent / "schedule_corpus"
ROOT = Path(__file__).resolve().parents[2]

# file -> (schedule, field, reason); a reason ending in "..." is a prefix
EXPECTED = {
    "bad_toml.toml": (None, None, "invalid TOML: ..."),
    "bad_json.json": (
        None,
        None,
        "not JSON: Expecting property name enclosed in double quotes at line 1 column 28",
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
    # A cron no date matches: croniter raises at every fire-time question, so loaded, it
    # stopped the leader at start and at each reload. Refused at load, bounded (5 years).
    "never_fires.toml": (
        "february-30",
        "cron",
        "'0 0 30 2 *' never fires: no date in the next 5 years matches it (a day the month "
        "does not have, such as 30 February?)",
    ),
    "april_31.json": ("april-31", "cron", "'0 12 31 4 *' never fires: no date in the next ..."),
    "not_utf8.toml": (None, None, "not UTF-8: byte 0xe9 at line 2, byte 12 of the line"),
    # 10,000 levels: past Python's recursion limit, in either parser.
    "deep.json": (None, None, "nested deeper than 64 levels at line 1 column 187"),
    "deep.toml": (
        None,
        None,
        "invalid TOML: nested too deeply to read (a payload may nest 64 levels at most)",
    ),
    # Deep enough to read, too deep for a payload (vox_flow.jsonvalue), extra field or not.
    "deep_payload.toml": ("nested", "payload.extra" + "[0]" * 63, "nested deeper than 64 levels"),
    "huge_int.json": (
        "#1",
        "payload.n",
        "integer 9007199254740993 is outside ±9007199254740991 (2**53 - 1); send it as a string",
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


def test_no_bad_file_raises_from_load_dir_and_the_good_ones_load(tmp_path: Path) -> None:
    """Every file of the corpus beside a good one, in one directory: load_dir reports each bad
    file (before: invalid UTF-8 raised UnicodeDecodeError, 10,000-deep JSON RecursionError, and
    30 February loaded as if fine) and loads the good one."""
    shutil.copy(ROOT / "schedules" / "sample.toml", tmp_path / "a_good.toml")
    for path in CORPUS.iterdir():
        shutil.copy(path, tmp_path / path.name)
    loaded = load_dir(app, tmp_path)
    assert sorted(loaded.definitions) == ["count-words-hourly", "count-words-nightly"]
    assert sorted(e.file.name for e in loaded.errors) == sorted(EXPECTED)


def test_an_unexpected_error_fails_its_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / "schedules" / "sample.toml", tmp_path / "a_good.toml")
    (tmp_path / "b_odd.toml").write_text('[[schedule]]\nname = "odd"\n')
    real = loader._parse

    def parse(path: Path) -> object:
        if path.name == "b_odd.toml":
            raise MemoryError("no room")
        return real(path)

    monkeypatch.setattr(loader, "_parse", parse)
    loaded = load_dir(app, tmp_path)
    assert sorted(loaded.definitions) == ["count-words-hourly", "count-words-nightly"]
    (error,) = loaded.errors
    assert error.file.name == "b_odd.toml"
    assert error.first.reason == "cannot be loaded: unexpected MemoryError: no room"


def test_a_cron_that_never_fires_answers_none_instead_of_raising() -> None:
    """What the timetable and `schedules list` ask of a cron: no question raises."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    cron = Cron("0 0 30 2 *", "Europe/Berlin")
    assert not cron.ever_fires(now)
    assert cron.next_after(now) is None
    assert cron.last_at_or_before(now) is None
    assert cron.upcoming(now, 5) == []
    assert cron.fires(now, now + timedelta(days=3650), 10) == []
    assert Cron("0 0 29 2 *").ever_fires(now)  # rare is not never


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
