"""Alembic environment of the ledger's own schema. Its version table lives in the
`release_ledger` schema, apart from the application's `alembic_version`, so the ledger never
takes part in the application's migrations or rollbacks. The connection is passed in by
ledger.store (config.attributes["connection"])."""

from alembic import context
from sqlalchemy import text

SCHEMA = "release_ledger"

connection = context.config.attributes["connection"]
# Two releases migrating one database's ledger at once: the second waits for the first.
connection.execute(text("select pg_advisory_xact_lock(hashtext('release_ledger'))"))
connection.execute(text(f"create schema if not exists {SCHEMA}"))
context.configure(
    connection=connection, version_table_schema=SCHEMA, transaction_per_migration=True
)
context.run_migrations()
