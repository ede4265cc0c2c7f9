"""The schema of the first release (made by create_all, before migrations existed).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "examples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("text_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200)),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("candidate_version", sa.String(200)),
        sa.Column("metrics", sa.JSON),
        sa.Column("decision", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("started_at", ts),
        sa.Column("finished_at", ts),
        sa.Column("heartbeat_at", ts),
    )
    op.create_index(
        "one_running_job",
        "jobs",
        ["state"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "versions",
        sa.Column("tag", sa.String(200), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(
        "active_versions",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )


def downgrade() -> None:
    for table in ("active_versions", "versions", "jobs", "examples"):
        op.drop_table(table)
