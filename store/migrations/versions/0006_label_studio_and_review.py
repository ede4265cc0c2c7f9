"""Label Studio's projects and annotation links, and the review queue.

`label_studio_projects`: what /label-studio/setup learnt from a project's
label config. `label_studio_annotations`: each annotation and the example it
made, so updates relabel and deletes remove (`store.label_studio`).
`review_queue`: served texts the model was least sure of (`store.review`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    name = sa.String(200)
    op.create_table(
        "label_studio_projects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("from_name", name, nullable=False),
        sa.Column("to_name", name, nullable=False),
        sa.Column("text_field", name, nullable=False),
        sa.Column("choices", sa.JSON, nullable=False),
        sa.Column("label_config", sa.Text, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(
        "label_studio_annotations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("project", sa.Integer, nullable=False, index=True),
        sa.Column("task", sa.Integer, nullable=False, index=True),
        sa.Column("example_id", sa.Integer, nullable=False, index=True),
        sa.Column("label", name, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(
        "review_queue",
        sa.Column("text_hash", sa.String(64), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", name, nullable=False),
        sa.Column("margin", sa.Float, nullable=False, index=True),
        sa.Column("model_version", name, nullable=False),
        sa.Column("created_at", ts, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("review_queue")
    op.drop_table("label_studio_annotations")
    op.drop_table("label_studio_projects")
