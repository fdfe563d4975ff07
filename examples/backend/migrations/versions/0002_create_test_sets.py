"""create test_sets

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from app.faults import inject_migration_faults

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "test_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
    )
    inject_migration_faults(revision)


def downgrade() -> None:
    op.drop_table("test_sets")
