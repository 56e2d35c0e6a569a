"""Schedule files: ``schedules/*.toml`` or ``*.json``, each holding a list of schedules.

    [[schedule]]
    name = "count-words"
    cron = "*/5 * * * *"
    task = "sample.count_words"
    payload = { name = "doc", text = "a b c" }

JSON files hold ``{"schedule": [{...}, ...]}``. A file is loaded whole or not at all: any
problem (text that is not UTF-8, syntax, JSON that ``vox_flow.jsonvalue`` refuses, nesting
too deep to read, an unknown field, a bad cron or one that never fires, a payload that does
not fit the task's input model, a name defined twice) fails that file with the file,
schedule, field and reason, and the other files still load: one bad file never stops the
others from firing.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vox_flow import jsonvalue
from vox_flow.contracts.schedule import OverlapPolicy, ScheduleDefinition
from vox_flow.errors import JsonValueError, PayloadError, UnknownTask, VoxFlowError
from vox_flow.schedules.cron import HORIZON_YEARS, Cron, utc_now
from vox_flow.tasks import lookup

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from vox_flow.application import VoxFlow

log = logging.getLogger("vox_flow.schedules")

SUFFIXES = (".toml", ".json")
# A jsonvalue path inside one schedule of a JSON file: schedule[2].payload.n
_IN_SCHEDULE = re.compile(r"schedule\[(?P<index>\d+)\]\.?(?P<field>.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    """One reason a file failed: which schedule (name or ``#index``), which field, why."""

    schedule: str | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = []
        if self.schedule is not None:
            where.append(f"schedule {self.schedule}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


class ScheduleFileError(VoxFlowError, ValueError):
    """A schedule file that failed to load; ``problems`` lists every reason found."""

    def __init__(self, file: Path, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("; ".join(f"{file}: {problem}" for problem in problems))

    @property
    def first(self) -> Problem:
        return self.problems[0]


@dataclass(frozen=True)
class Loaded:
    """The schedules loaded from a directory (name -> definition, name -> file) and the
    files that failed."""

    definitions: dict[str, ScheduleDefinition] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    errors: list[ScheduleFileError] = field(default_factory=list)


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        reason = (
            f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, byte {column} of the line"
        )
        raise ScheduleFileError(path, [Problem(None, None, reason)]) from None


def _json_problem(exc: JsonValueError) -> Problem:
    """``schedule[2].payload.n`` read as schedule ``#3``, field ``payload.n``."""
    found = _IN_SCHEDULE.match(exc.field)
    if found is None:
        return Problem(None, exc.field or None, exc.reason)
    return Problem(f"#{int(found['index']) + 1}", found["field"] or None, exc.reason)


def _parse(path: Path) -> Any:
    text = _text(path)
    if path.suffix == ".json":
        try:
            # Strict JSON (vox_flow.jsonvalue): no NaN, no duplicate key, no integer past
            # 2**53, nesting bounded before the parser recurses into it.
            return jsonvalue.parse(text, field="")
        except JsonValueError as exc:
            raise ScheduleFileError(path, [_json_problem(exc)]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleFileError(path, [Problem(None, None, f"invalid TOML: {exc}")]) from None
    except RecursionError:
        # tomllib recurses into nested arrays and inline tables; a payload may nest only
        # jsonvalue.MAX_DEPTH levels anyway.
        reason = (
            "invalid TOML: nested too deeply to read "
            f"(a payload may nest {jsonvalue.MAX_DEPTH} levels at most)"
        )
        raise ScheduleFileError(path, [Problem(None, None, reason)]) from None


def _entries(path: Path, document: Any) -> list[Any]:
    if not isinstance(document, dict):
        raise ScheduleFileError(path, [Problem(None, None, "the file must hold a table")])
    unknown = sorted(set(document) - {"schedule"})
    if unknown:
        reason = f"unknown top-level key {unknown[0]!r}; schedules go in [[schedule]]"
        raise ScheduleFileError(path, [Problem(None, unknown[0], reason)])
    entries = document.get("schedule")
    if not isinstance(entries, list) or not entries:
        reason = "no schedules: expected a non-empty list under 'schedule'"
        raise ScheduleFileError(path, [Problem(None, "schedule", reason)])
    return entries


def _check(
    app: VoxFlow, index: int, entry: Any, now: datetime
) -> tuple[ScheduleDefinition | None, list[Problem]]:
    label = f"#{index + 1}"
    if not isinstance(entry, dict):
        return None, [Problem(label, None, "a schedule must be a table")]
    if isinstance(entry.get("name"), str) and entry["name"]:
        label = entry["name"]
    if "payload" in entry:
        try:
            # Whole, extra fields included: the payload is submitted as written at every fire.
            jsonvalue.check(entry["payload"], field="payload")
        except JsonValueError as exc:
            return None, [Problem(label, exc.field, exc.reason)]
    try:
        spec = ScheduleDefinition.model_validate(entry)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"]) or None
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown field"
            problems.append(Problem(label, loc, reason))
        return None, problems
    try:
        typed = lookup(app, spec.task)
        typed.validate(spec.payload)
    except UnknownTask as exc:
        return None, [Problem(label, "task", str(exc))]
    except PayloadError as exc:
        return None, [Problem(label, f"payload.{name}", why) for name, why in exc.errors]
    if spec.overlap != OverlapPolicy.ALLOW and typed.celery_task.ignore_result:
        # Overlap is judged from the previous run's result state; without results every run
        # would look unfinished and the policy would hold back every fire after the first.
        return None, [
            Problem(
                label, "overlap", "needs task results (VOX_FLOW_IGNORE_RESULTS is on); use allow"
            )
        ]
    if not Cron(spec.cron, spec.timezone).ever_fires(now):
        # Loaded, it would be a schedule that is never due; worse, croniter raises on it.
        reason = (
            f"{spec.cron!r} never fires: no date in the next {HORIZON_YEARS} years matches it "
            "(a day the month does not have, such as 30 February?)"
        )
        return None, [Problem(label, "cron", reason)]
    return spec, []


def load_file(app: VoxFlow, path: Path, now: datetime | None = None) -> list[ScheduleDefinition]:
    """Every schedule in one file; raises ScheduleFileError naming each problem (and OSError
    when the file cannot be read). ``now``: from when a cron must fire (default: now)."""
    now = now or utc_now()
    entries = _entries(path, _parse(path))
    specs: list[ScheduleDefinition] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        spec, found = _check(app, index, entry, now)
        problems.extend(found)
        if spec is None:
            continue
        if spec.name in seen:
            problems.append(Problem(spec.name, "name", "defined twice in this file"))
        seen.add(spec.name)
        specs.append(spec)
    if problems:
        raise ScheduleFileError(path, problems)
    return specs


def load_dir(app: VoxFlow, directory: Path, now: datetime | None = None) -> Loaded:
    """Every good file's schedules in ``directory`` (sorted by file name) and the bad files.

    Never raises for a file: whatever is wrong with one (even an error this module did not
    foresee) fails that file alone. A name already taken by an earlier file fails the later
    file.
    """
    loaded = Loaded()
    if not directory.is_dir():
        return loaded
    now = now or utc_now()
    for path in sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES):
        try:
            specs = load_file(app, path, now)
            taken = [s for s in specs if s.name in loaded.definitions]
            if taken:
                first = taken[0]
                reason = f"already defined in {loaded.files[first.name].name}"
                raise ScheduleFileError(path, [Problem(first.name, "name", reason)])
        except ScheduleFileError as exc:
            loaded.errors.append(exc)
            continue
        except OSError as exc:
            reason = f"cannot be read: {exc.strerror or exc}"
            loaded.errors.append(ScheduleFileError(path, [Problem(None, None, reason)]))
            continue
        except Exception as exc:
            # A leader loads every file at start and at each reload: no file may take the
            # others down with it. The traceback at debug level only: a CLI shows none.
            log.debug("schedule file %s: unexpected error while loading it", path, exc_info=True)
            reason = f"cannot be loaded: unexpected {type(exc).__name__}: {exc}"
            loaded.errors.append(ScheduleFileError(path, [Problem(None, None, reason)]))
            continue
        for spec in specs:
            loaded.definitions[spec.name] = spec
            loaded.files[spec.name] = path
    return loaded
