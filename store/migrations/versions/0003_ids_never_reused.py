"""Example ids are never reused, and a deleted id can be audited more than once.

SQLite hands a deleted row's id (the largest) to the next insert unless the
table is AUTOINCREMENT, so an id a labeling tool kept could name another
example, and deleting that one failed on `deleted_examples`' primary key.
`examples` becomes AUTOINCREMENT, its counter starting past every id ever
used (live or deleted); PostgreSQL's sequence never reuses ids already.
`deleted_examples` is keyed by (id, revision), so a database that already
reused an id can still delete it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def _rekey_deleted(columns: list[str]) -> None:
    """Rebuild `deleted_examples` with `columns` as its primary key, rows kept."""
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "deleted_examples_new",
        sa.Column("id", sa.Integer, primary_key="id" in columns, autoincrement=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200)),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("deleted_at", ts, nullable=False),
        sa.Column("revision", sa.Integer, primary_key="revision" in columns, autoincrement=False),
        sa.Column("reason", sa.Text),
    )
    names = "id, text, label, source, created_at, deleted_at, revision, reason"
    op.execute(f"INSERT INTO deleted_examples_new ({names}) SELECT {names} FROM deleted_examples")
    op.drop_table("deleted_examples")
    op.rename_table("deleted_examples_new", "deleted_examples")


def upgrade() -> None:
    _rekey_deleted(["id", "revision"])
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "examples", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    op.execute("DELETE FROM sqlite_sequence WHERE name = 'examples'")
    op.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'examples', MAX(m) FROM ("
        " SELECT COALESCE(MAX(id), 0) AS m FROM examples"
        " UNION ALL SELECT COALESCE(MAX(id), 0) FROM deleted_examples)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "examples", recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass
    _rekey_deleted(["id"])
