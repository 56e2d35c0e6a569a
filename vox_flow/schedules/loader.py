"""Schedule files: ``schedules/*.toml`` or ``*.json``, each holding a list of schedules.

    [[schedule]]
    name = "count-words"
    cron = "*/5 * * * *"
    task = "sample.count_words"
    payload = { name = "doc", text = "a b c" }

JSON files hold ``{"schedule": [{...}, ...]}``. A file is loaded whole or not at all: any
problem (syntax, an unknown field, a bad cron, a payload that does not fit the task's input
model, a name defined twice) fails that file with the file, schedule, field and reason, and
the other files still load.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vox_flow.contracts.schedule import OverlapPolicy, ScheduleDefinition
from vox_flow.errors import PayloadError, UnknownTask, VoxFlowError
from vox_flow.tasks import lookup

if TYPE_CHECKING:
    from pathlib import Path

    from vox_flow.application import VoxFlow

SUFFIXES = (".toml", ".json")


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


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScheduleFileError(
                path, [Problem(None, None, f"invalid JSON at line {exc.lineno}: {exc.msg}")]
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleFileError(path, [Problem(None, None, f"invalid TOML: {exc}")]) from None


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


def _check(app: VoxFlow, index: int, entry: Any) -> tuple[ScheduleDefinition | None, list[Problem]]:
    label = f"#{index + 1}"
    if not isinstance(entry, dict):
        return None, [Problem(label, None, "a schedule must be a table")]
    if isinstance(entry.get("name"), str) and entry["name"]:
        label = entry["name"]
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
    return spec, []


def load_file(app: VoxFlow, path: Path) -> list[ScheduleDefinition]:
    """Every schedule in one file; raises ScheduleFileError naming each problem."""
    entries = _entries(path, _parse(path))
    specs: list[ScheduleDefinition] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        spec, found = _check(app, index, entry)
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


def load_dir(app: VoxFlow, directory: Path) -> Loaded:
    """Every good file's schedules in ``directory`` (sorted by file name) and the bad files.

    A name already taken by an earlier file fails the later file.
    """
    loaded = Loaded()
    if not directory.is_dir():
        return loaded
    for path in sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES):
        try:
            specs = load_file(app, path)
            taken = [s for s in specs if s.name in loaded.definitions]
            if taken:
                first = taken[0]
                reason = f"already defined in {loaded.files[first.name].name}"
                raise ScheduleFileError(path, [Problem(first.name, "name", reason)])
        except ScheduleFileError as exc:
            loaded.errors.append(exc)
            continue
        except OSError as exc:
            loaded.errors.append(ScheduleFileError(path, [Problem(None, None, str(exc))]))
            continue
        for spec in specs:
            loaded.definitions[spec.name] = spec
            loaded.files[spec.name] = path
    return loaded
