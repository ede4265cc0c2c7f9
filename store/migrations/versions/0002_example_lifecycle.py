"""Example revisions, change log and deletion audit; job mode and summary; version data revision.

Existing examples get revision 0 and updated_at = created_at: all of them
predate every snapshot a retrain will take from now on.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("examples") as batch:
        batch.add_column(sa.Column("updated_at", ts))
        batch.add_column(sa.Column("revision", sa.Integer, nullable=False, server_default="0"))
        batch.create_index("ix_examples_revision", ["revision"])
    op.execute("UPDATE examples SET updated_at = created_at")
    op.create_table(
        "example_changes",
        sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", ts, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(200)),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("detail", sa.JSON),
    )
    op.create_table(
        "deleted_examples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200)),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("deleted_at", ts, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
    )
    meta = op.create_table(
        "store_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "examples_revision", "value": 0}])
    op.add_column("jobs", sa.Column("mode", sa.String(16)))
    op.add_column("jobs", sa.Column("summary", sa.JSON))
    op.add_column("versions", sa.Column("data_revision", sa.Integer))


def downgrade() -> None:
    op.drop_column("versions", "data_revision")
    op.drop_column("jobs", "summary")
    op.drop_column("jobs", "mode")
    for table in ("store_meta", "deleted_examples", "example_changes"):
        op.drop_table(table)
    with op.batch_alter_table("examples") as batch:
        batch.drop_index("ix_examples_revision")
        batch.drop_column("revision")
        batch.drop_column("updated_at")
