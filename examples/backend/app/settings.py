"""Configuration from the environment, as the container receives it."""

import os

VERSION = os.environ.get("APP_VERSION", "dev")
# Failure switches for tests (see the Dockerfile and app/faults.py); empty means off.
FAIL_HEALTH = os.environ.get("BACKEND_FAIL_HEALTH", "") not in ("", "0")
FAIL_MIGRATION = os.environ.get("BACKEND_FAIL_MIGRATION", "")
MIGRATION_DELAY = float(os.environ.get("BACKEND_MIGRATION_DELAY") or 0)
CRASH_AFTER = float(os.environ.get("BACKEND_CRASH_AFTER") or -1)  # negative: never
HEALTH_DELAY = float(os.environ.get("BACKEND_HEALTH_DELAY") or 0)
HEALTH_DATABASE_DOWN = os.environ.get("BACKEND_HEALTH_DATABASE_DOWN", "") not in ("", "0")
# Where /health looks for the database when HEALTH_DATABASE_DOWN: a port nothing listens on.
UNREACHABLE_DATABASE_URL = "postgresql+psycopg://health@127.0.0.1:1/unreachable"


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
