"""Configuration from the environment, as the container receives it."""

import os

VERSION = os.environ.get("APP_VERSION", "dev")
FAIL_HEALTH = os.environ.get("BACKEND_FAIL_HEALTH", "") not in ("", "0")
FAIL_MIGRATION = os.environ.get("BACKEND_FAIL_MIGRATION", "")


def database_url() -> str:
    """The SQLAlchemy URL (psycopg 3 driver) for DATABASE_URL."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def broker_url() -> str:
    """Celery broker on the same database, as the Rhesis seed does (sqla+postgresql://)."""
    return "sqla+" + database_url()
