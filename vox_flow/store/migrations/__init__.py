"""Alembic migrations of the control store (run by ``vox_flow.store.engine.migrate``)."""
