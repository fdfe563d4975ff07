"""Every role's image (api, worker, migrate).

For a while this column was added by revision 0002 itself, so a ledger stamped 0002 may
already have it: the column is added only where it is missing. (A revision that has been
applied somewhere is never edited again; this one exists because one was.)

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "alter table release_ledger.releases"
        " add column if not exists images jsonb not null default '{}'"
    )


def downgrade() -> None:
    op.drop_column("releases", "images", schema="release_ledger")
