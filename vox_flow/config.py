"""The one settings model: every knob is a ``VOX_FLOW_*`` environment variable.

Nothing else in vox_flow reads ``os.environ``. Every field is listed, with its default, in
docs/configuration.md; a test keeps the two in step.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from pydantic import ValidationError


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "vox_flow"


class Settings(BaseSettings):
    """vox_flow's configuration, read from ``VOX_FLOW_*`` variables (and nothing else)."""

    # No inf/nan: an infinite lease or interval would silently turn a guarantee off.
    model_config = SettingsConfigDict(
        env_prefix="VOX_FLOW_", extra="ignore", frozen=True, allow_inf_nan=False
    )

    # --- broker and results -------------------------------------------------------------
    broker_url: str | None = Field(
        default=None,
        description="Redis URL of the broker. Unset: `vox-flow dev` starts an embedded server.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend URL. Unset: the broker URL."
    )
    task_modules: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Modules a worker imports to register its tasks (comma-separated). "
        "Unset: none (`vox-flow dev` adds its sample, `vox_flow.examples.sample`).",
    )
    ignore_results: bool = Field(
        default=False,
        description="Store no task results (fire-and-forget; handles cannot wait for results).",
    )
    result_ttl_seconds: int = Field(default=86_400, ge=60, description="How long results live.")
    durable_submit: Literal["none", "waitaof"] = Field(
        default="none",
        description="`waitaof`: submit returns only once the broker confirms (WAITAOF) the "
        "message is in its append-only file; how far that is on disk depends on the server's "
        "appendfsync (docs/operations.md). Needs Redis/Valkey >= 7.2 with appendonly. "
        "`none`: rely on the server's appendfsync alone.",
    )

    # --- node identity and worker layout ------------------------------------------------
    node_id: str = Field(
        default_factory=socket.gethostname, description="This machine's name in the mesh."
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where vox_flow keeps its files (embedded broker, store, keys).",
    )
    worker_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Worker processes `vox-flow worker` supervises (one per core by default).",
    )
    worker_prefetch: int = Field(
        default=4, ge=1, description="Messages each worker process reserves ahead."
    )
    task_hard_time_limit: float = Field(
        default=3600.0, gt=0, description="Default hard time limit of a task run, in seconds."
    )

    # --- recovery of a dead worker's messages ------------------------------------------
    lease_seconds: float = Field(
        default=30.0,
        gt=1,
        description="A reserved message whose lease is not renewed for this long goes back "
        "to its queue.",
    )
    lease_renew_seconds: float = Field(
        default=5.0, gt=0, description="How often a live worker renews its leases."
    )
    reaper_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often a worker looks for expired leases."
    )
    lease_takeback_limit: int = Field(
        default=5,
        ge=1,
        description="A message taken back this many times from workers that died holding "
        "it is dead-lettered instead (a task that takes its whole worker or host down).",
    )

    # --- idempotency, attempts, dead letters -------------------------------------------
    idempotency_ttl_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long an idempotency key is remembered."
    )
    attempts_ttl_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long per-task attempt records are kept."
    )
    dead_letter_ttl_days: int = Field(
        default=30, ge=1, description="Dead letters older than this are pruned."
    )

    # --- telemetry ----------------------------------------------------------------------
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        default="none",
        description="Where spans go: `none` (nowhere), `console` (stdout) or `otlp` "
        "(OTLP/HTTP; needs the otlp extra: pip install 'vox_flow[otlp]').",
    )
    otel_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP endpoint when `otel_exporter` is `otlp`."
    )

    # --- control store and audit --------------------------------------------------------
    store_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the control store. Unset: SQLite in the data dir.",
    )
    audit_checkpoint_every: int = Field(
        default=1000, ge=1, description="Write a signed checkpoint every N audit entries."
    )
    oplog_snapshot_every: int = Field(
        default=1024, ge=16, description="Write an op-log snapshot every N ops."
    )
    audit_retention_days: int | None = Field(
        default=None, ge=1, description="Audit entries are kept forever unless this is set."
    )
    oplog_retention_days: int = Field(default=90, ge=1, description="Op-log retention.")
    outbox_retention_days: int = Field(
        default=7, ge=1, description="Completed audit outbox rows older than this are pruned."
    )
    control_checkpoint_seconds: float = Field(
        default=60.0,
        gt=0,
        description="`vox-flow control` signs a checkpoint this often when the audit log grew.",
    )
    control_outbox_retry_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A leading `vox-flow control` runs audited effects left pending (a crash, "
        "an unreachable broker) again this often, and at the start of every term.",
    )
    control_leader_ttl_seconds: float = Field(
        default=10.0,
        gt=0.5,
        description="Leader lock TTL of `vox-flow control` replicas: one ingests and signs "
        "checkpoints; a standby takes over within this (plus a tenth of it) of the "
        "leader's death, at once when it stops cleanly.",
    )
    store_sqlite_synchronous: Literal["before_output", "full", "normal"] = Field(
        default="before_output",
        description="SQLite store durability. `before_output` fsyncs a commit before "
        "anything it wrote leaves the store (an outside effect, a checkpoint or export "
        "handed out), so a power cut never takes back what was done or seen outside; "
        "`full` fsyncs every commit; `normal` never waits for the disk (docs/store.md).",
    )

    # --- schedules ----------------------------------------------------------------------
    schedules_dir: Path = Field(
        default=Path("schedules"), description="Directory of schedule definition files."
    )
    beat_leader_ttl_seconds: float = Field(
        default=10.0, gt=0.5, description="Leader lock TTL: a dead leader is replaced within it."
    )
    beat_tick_seconds: float = Field(
        default=0.2, gt=0, description="How often the scheduler wakes to fire due schedules."
    )
    beat_misfire_grace_seconds: float = Field(
        default=1.0,
        ge=0,
        description="A fire later than this counts as missed and follows its missed-run policy.",
    )

    @field_validator("lease_renew_seconds")
    @classmethod
    def _renew_within_the_lease(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds")
        if lease is not None and value >= lease:
            raise ValueError(
                f"must be shorter than VOX_FLOW_LEASE_SECONDS ({lease:g}): a lease renewed "
                "less often than it lasts lapses under a live worker"
            )
        return value

    @field_validator("otel_exporter")
    @classmethod
    def _exporter_installed(cls, value: str) -> str:
        if value == "otlp":
            try:
                found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http")
            except ModuleNotFoundError:
                found = None
            if found is None:
                raise ValueError("needs the otlp extra: pip install 'vox_flow[otlp]'")
        return value

    @field_validator("task_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def broker(self) -> str:
        """The broker URL; raises when none is configured and no embedded one was started."""
        if self.broker_url is None:
            raise RuntimeError(
                "VOX_FLOW_BROKER_URL is not set: export it, or run `vox-flow dev`, which "
                "starts an embedded broker"
            )
        return self.broker_url

    @property
    def backend(self) -> str:
        """The result backend URL (defaults to the broker)."""
        return self.result_backend or self.broker

    @property
    def store(self) -> str:
        """The control store's SQLAlchemy URL (defaults to SQLite in the data dir)."""
        return self.store_url or f"sqlite:///{self.data_dir / 'control.db'}"


def settings_table() -> str:
    """The Markdown table of every setting (docs/configuration.md holds it; a test compares)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = {
                "node_id": "the host name",
                "data_dir": "`~/.local/share/vox_flow`",
                "worker_processes": "the number of cores",
            }.get(name, "(computed)")
        elif field.default is None:
            default = "unset"
        elif isinstance(field.default, list):
            default = "`" + ",".join(field.default) + "`" if field.default else "none"
        else:
            default = f"`{field.default}`"
        meaning = " ".join((field.description or "").split())
        rows.append(f"| `VOX_FLOW_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def load_settings() -> Settings:
    """Read the settings from the environment (the only place that does).

    Raises pydantic's ValidationError naming the fields; :func:`setting_errors` turns it into
    the variables' names and reasons."""
    return Settings()


def setting_errors(error: ValidationError) -> list[tuple[str, str]]:
    """``(variable, reason)`` for each bad value of a Settings ValidationError, e.g.
    ``("VOX_FLOW_LEASE_SECONDS", "Input should be greater than 1 (got '0.5')")``."""
    out = []
    for detail in error.errors():
        loc = detail["loc"]
        variable = f"VOX_FLOW_{str(loc[0]).upper()}" if loc else "VOX_FLOW_*"
        reason = detail["msg"].removeprefix("Value error, ")
        value = detail.get("input")
        if isinstance(value, str):
            shown = value if len(value) <= 60 else value[:59] + "…"
            reason += f" (got {shown!r})"
        out.append((variable, reason))
    return out
