"""The control store: SQLAlchemy rows, engine and Alembic migrations (SQLite, PostgreSQL)."""

from __future__ import annotations

from vox_flow.store.engine import Store, driver_sql, now_us, open_store, raw_cursor

__all__ = ["Store", "driver_sql", "now_us", "open_store", "raw_cursor"]
