"""The release ledger: every release and rollback of an environment, kept in that
environment's own database (schema `release_ledger`, with its own Alembic migrations), so
the history lives beside the data it describes and survives the flow runs."""
