"""Alembic environment: always run on the connection `store.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from store import changes, examples, jobs, label_studio, review, versions  # noqa: F401  (registers the tables)
from store.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
