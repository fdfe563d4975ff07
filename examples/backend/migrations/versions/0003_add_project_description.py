"""add projects.description (nullable: safe while the previous version still runs)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from app.faults import inject_migration_faults

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("description", sa.Text, nullable=True))
    inject_migration_faults(revision)


def downgrade() -> None:
    op.drop_column("projects", "description")
