"""Alembic environment: runs on the connection vox_flow hands over, inside its transaction."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from vox_flow.store.rows import Base

connection = context.config.attributes.get("connection")
if isinstance(connection, Connection):
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:  # run by hand: `sqlalchemy.url` from the ini file or -x url=...
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if url is None:
        raise SystemExit("pass the store URL: alembic -x url=sqlite:///... upgrade head")
    with create_engine(url).begin() as own:
        context.configure(connection=own, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
