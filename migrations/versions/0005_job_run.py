"""a job's prepared run: its config with every "auto" setting made concrete for its sources (core.options.prepare)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run", sa.JSON, nullable=True))  # null for jobs submitted before: the worker prepares them


def downgrade() -> None:
    op.drop_column("jobs", "run")
