"""Prefect flows: the release, its rollback subflow, and the entry flows."""
