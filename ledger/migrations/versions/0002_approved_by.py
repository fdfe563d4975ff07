"""Who approved a release, where the environment requires an approval.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("releases", sa.Column("approved_by", sa.Text), schema="release_ledger")


def downgrade() -> None:
    op.drop_column("releases", "approved_by", schema="release_ledger")
