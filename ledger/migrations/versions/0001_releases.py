"""The releases table: one row per release or rollback of an environment.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("environment", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("started_by", sa.String(200), nullable=False),
        sa.Column("flow_run_id", sa.String(36)),
        sa.Column("flow_run_url", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("version", sa.String(200)),
        sa.Column("image", sa.Text),
        sa.Column("previous_version", sa.String(200)),
        sa.Column("previous_image", sa.Text),
        sa.Column("schema_before", sa.String(64)),
        sa.Column("schema_after", sa.String(64)),
        sa.Column("workers_before", sa.Integer),
        sa.Column("workers_after", sa.Integer),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("steps", JSONB, nullable=False, server_default="[]"),
        sa.Column("rollback", JSONB, nullable=False, server_default="[]"),
        # What should run once this entry ended (API image, worker count, schema revision);
        # NULL when unknown: still in progress, or its rollback failed.
        sa.Column("expected", JSONB),
        schema="release_ledger",
    )
    op.create_index(
        "releases_by_environment",
        "releases",
        ["environment", sa.text("started_at desc")],
        schema="release_ledger",
    )


def downgrade() -> None:
    op.drop_table("releases", schema="release_ledger")
