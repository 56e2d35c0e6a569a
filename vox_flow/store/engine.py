"""The control store's engine: SQLite (default) or PostgreSQL, migrated on first use."""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from vox_flow.config import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: the PostgreSQL advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK = 0x766F78666C6F77

_WRITE = "vf_write"
SYNCHRONOUS = ("before_output", "full", "normal")


def now_us() -> int:
    """The current time in integer microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


class Store:
    """A connection pool to the control store, with its schema migrated to the latest."""

    def __init__(
        self,
        url: str,
        *,
        checkpoint_every: int = 1000,
        snapshot_every: int = 1024,
        sqlite_synchronous: str = "before_output",
        migrate: bool = True,
        echo: bool = False,
    ) -> None:
        self.url = url
        # Policies of the audit log and op-log, carried here so every writer sees the same.
        self.checkpoint_every = checkpoint_every
        self.snapshot_every = snapshot_every
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        # The WAL file that sync() fsyncs: only SQLite in before_output mode syncs on demand
        # (full: every commit; normal: never; PostgreSQL: every commit).
        self._wal: Path | None = None
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                if sqlite_synchronous == "before_output":
                    self._wal = Path(f"{database}-wal")
            kwargs["connect_args"] = {"timeout": 60.0}
        self.engine: Engine = create_engine(url, **kwargs)
        # Writers connect through this view of the same pool: their connections carry the
        # write flag from the start (no per-transaction execution_options call).
        self._writer: Engine = self.engine.execution_options(**{_WRITE: True})
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, sqlite_synchronous)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the latest migration (safe to run from many processes)."""
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def write(self, *, durable: bool = False, dry_run: bool = False) -> Iterator[Connection]:
        """A transaction that holds the write lock from its first statement (SQLite:
        ``BEGIN IMMEDIATE``), committed on exit and rolled back on error.

        ``dry_run``: always rolled back, so the same statements report what they would
        change (row counts) and change nothing.

        ``durable``: its commit (and every commit before it) is on disk when it returns
        (SQLite ``before_output``; ``full`` and PostgreSQL sync every commit, ``normal``
        never): for a transaction whose result is about to leave the store (an outside
        effect runs next, a checkpoint is handed out).
        """
        if dry_run:
            with self._writer.connect() as conn:
                transaction = conn.begin()
                try:
                    yield conn
                finally:
                    transaction.rollback()
            return
        with self._writer.connect() as conn, conn.begin():
            yield conn
        if durable:
            self.sync()

    def sync(self) -> None:
        """Put every commit made so far on disk (SQLite ``before_output``; ``full`` and
        PostgreSQL sync each commit already, ``normal`` opts out).

        A durable write calls it after its commit. A reader calls it once its snapshot is
        open and before handing out what it shows, so a power cut cannot take back what
        someone has seen.
        """
        if self._wal is None:
            return
        # fsync the WAL file itself: every commit since the WAL last restarted is in it, and
        # it restarts only after a complete checkpoint, which synced the database file. Not
        # a wal_checkpoint: that syncs nothing when a reader pins the last copied frame or
        # another checkpoint runs, and then says so only in a result row.
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL: every commit is in the (synced) database file
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (one consistent snapshot on both backends)."""
        with self.engine.connect() as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    if synchronous not in SYNCHRONOUS:
        raise ValueError(
            f"sqlite synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}"
        )
    # NORMAL in WAL mode loses no commit to a killed process, only the latest ones to a
    # power cut, and those whole (entry and in-store effect together); before_output adds
    # Store.sync() where something leaves the store.
    level = "FULL" if synchronous == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN is ours to issue.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it returns, so an acknowledged audit entry
        # survives a power cut. NORMAL (WAL): it survives a killed process, not a power cut.
        cursor.execute(f"PRAGMA synchronous={level}")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes the lock up front: two deferred transactions that both read then
        # write would deadlock into SQLITE_BUSY instead of queueing.
        # Straight to the driver: SQLAlchemy's statement path would cost more than BEGIN.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if immediate else "BEGIN"
        )


def open_store(settings: Settings | None = None) -> Store:
    """The control store named by the settings (``VOX_FLOW_STORE_URL`` / data dir)."""
    settings = settings or load_settings()
    return Store(
        settings.store,
        checkpoint_every=settings.audit_checkpoint_every,
        snapshot_every=settings.oplog_snapshot_every,
        sqlite_synchronous=settings.store_sqlite_synchronous,
    )


_NAMED = re.compile(r":(\w+)")


def raw_cursor(conn: Connection) -> Any:
    """The DB-API cursor of ``conn``'s own connection (same transaction).

    For hot paths only: SQLAlchemy's per-statement overhead exceeds SQLite's whole statement.
    """
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def driver_sql(conn: Connection, sql: str, *, lock: bool | str = False) -> str:
    """``sql`` written with ``:name`` parameters, in ``conn``'s driver's style.

    ``lock`` appends ``FOR UPDATE`` on PostgreSQL (a table name or alias: ``FOR UPDATE OF``
    it, for joins); SQLite needs none, since its writers hold the database lock from
    ``BEGIN IMMEDIATE``.
    """
    if conn.dialect.name == "sqlite":
        return sql
    suffix = "" if not lock else " FOR UPDATE" if lock is True else f" FOR UPDATE OF {lock}"
    return _NAMED.sub(r"%(\1)s", sql) + suffix
