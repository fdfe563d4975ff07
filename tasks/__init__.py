"""Prefect tasks, one module per release step. Platform-free: they talk to a Target."""
