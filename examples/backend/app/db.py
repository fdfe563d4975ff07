from functools import lru_cache

from sqlalchemy import Engine, create_engine

from app.settings import HEALTH_DATABASE_DOWN, UNREACHABLE_DATABASE_URL, database_url


@lru_cache(maxsize=1)
def engine() -> Engine:
    return create_engine(database_url(), pool_pre_ping=True, connect_args={"connect_timeout": 3})


@lru_cache(maxsize=1)
def health_engine() -> Engine:
    """What /health checks: the application database, or (HEALTH_DATABASE_DOWN) one that
    cannot be reached, as when the database is down for this version only."""
    if not HEALTH_DATABASE_DOWN:
        return engine()
    return create_engine(UNREACHABLE_DATABASE_URL, connect_args={"connect_timeout": 3})
