"""a data migration through the connection: cannot be rendered offline

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    existing = connection.execute(sa.text("select count(*) from projects")).scalar()
    if existing == 0:
        connection.execute(sa.text("insert into projects (name) values ('default')"))


def downgrade() -> None:
    op.get_bind().execute(sa.text("delete from projects where name = 'default'"))
