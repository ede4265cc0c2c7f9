"""Every job says what queued it, and the store revision it was queued at.

`trigger` is who asked: `api` (POST /retrain), `bootstrap`, `labels` (the
automatic retrain policy), `drift`, or `label-studio` (its START_TRAINING);
jobs queued before this revision were all asked for over the API.
`trigger_revision` is the examples' revision when it was queued: the automatic
policy counts the labels written after the newest job's (`store.triggers`).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("trigger", sa.String(32)))
        batch.add_column(sa.Column("trigger_revision", sa.Integer))
    op.execute("UPDATE jobs SET trigger = 'api'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trigger_revision")
        batch.drop_column("trigger")
