"""Failure injection for tests: BACKEND_FAIL_MIGRATION=<revision> breaks that revision."""

from alembic import op

from app.settings import FAIL_MIGRATION


def fail_migration_if_requested(revision: str) -> None:
    """Raise while really migrating (offline SQL rendering is left alone)."""
    if revision == FAIL_MIGRATION and not op.get_context().as_sql:
        raise RuntimeError(f"injected failure in migration {revision} (BACKEND_FAIL_MIGRATION)")
