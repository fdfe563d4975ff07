"""Failure injection for tests: BACKEND_FAIL_MIGRATION=<revision> breaks that revision."""

from app.settings import FAIL_MIGRATION


def fail_migration_if_requested(revision: str) -> None:
    if revision == FAIL_MIGRATION:
        raise RuntimeError(f"injected failure in migration {revision} (BACKEND_FAIL_MIGRATION)")
