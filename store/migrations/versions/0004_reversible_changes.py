"""Every label change is reversible: a per-row change log, and sources indexed.

`example_row_changes` records, for every write from now on, each row's label
and source before and after, and which revert undid it (`store.revert`).
The existing change log (`example_changes`, counts per write) is kept as it
was and stays readable; writes made before this revision have no per-row
entries, so their rows revert by source as DELETE ?source= deleted them.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    name = sa.String(200)
    op.create_table(
        "example_row_changes",
        sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("example_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("old_label", name),
        sa.Column("old_source", name),
        sa.Column("new_label", name),
        sa.Column("new_source", name),
        sa.Column("reverted_in", sa.Integer),
    )
    op.create_index("ix_example_row_changes_example_id", "example_row_changes", ["example_id"])
    op.create_index("ix_example_row_changes_new_source", "example_row_changes", ["new_source"])
    op.create_index("ix_examples_source", "examples", ["source"])


def downgrade() -> None:
    op.drop_index("ix_examples_source", "examples")
    op.drop_table("example_row_changes")
