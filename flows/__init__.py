"""Prefect flows: the release and its entry flows, plan, rollback and restore, the
compensating subflow, and the status report."""
