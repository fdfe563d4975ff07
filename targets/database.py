"""The application database as the release sees it: the Alembic revision, and errors
classified so a wrong URL is a clear configuration error and never shows the password.
"""

import hashlib
import re
import threading
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError

from targets.errors import AuthenticationError, ConfigurationError, TransientError


def sqlalchemy_url(url: str) -> str:
    """postgresql:// URLs use the psycopg 3 driver (what the backend image ships)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


UrlPart = Literal["user", "password", "host", "port", "database"]
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DatabaseVariables:
    """The environment variables an application reads its database from: the whole URL
    under one or more names (`url`), and/or its parts under names of their own (`parts`,
    for apps that build the URL themselves, e.g. SQLALCHEMY_DB_USER/_PASS/_HOST/_NAME)."""

    url: tuple[str, ...] = ("DATABASE_URL",)
    parts: dict[str, UrlPart] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [*self.url, *self.parts]

    def environment(self, database_url: str) -> dict[str, str]:
        """Every variable set from `database_url`: what the app must see to use it."""
        url = _parse(database_url)
        values = {
            "user": url.username or "",
            "password": url.password or "",
            "host": url.host or "",
            "port": str(url.port or 5432),
            "database": url.database or "",
        }
        return {
            **{name: database_url for name in self.url},
            **{name: values[part] for name, part in self.parts.items()},
        }


def check_variable_names(names: list[str], what: str) -> list[str]:
    """Environment variable names, or ValueError naming the bad one."""
    for name in names:
        if not _VARIABLE.match(name):
            raise ValueError(
                f"{what}: {name!r} is not an environment variable name (letters, digits and "
                "'_', not starting with a digit)"
            )
    return names


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            "the database URL in the environment's Secret block is not a valid URL: "
            "expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        ) from None


def read_revision(url: str) -> str | None:
    """The current Alembic revision, or None for a database never migrated."""
    try:
        engine = create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": 5})
    except ArgumentError:
        raise ConfigurationError(
            "the database URL in the environment's Secret block is not a valid URL: "
            "expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        ) from None
    try:
        with engine.connect() as conn:
            return conn.execute(text("select version_num from alembic_version")).scalar()
    except ProgrammingError:
        return None  # no alembic_version table yet
    except OperationalError as exc:
        raise classify_connection_error(exc, url) from None
    finally:
        engine.dispose()


def schema_fingerprint(url: str) -> str:
    """A digest of what a migration changes: the Alembic revision and every table's columns
    (outside PostgreSQL's own schemas). Equal before and after: the schema was not touched."""
    query = text(
        "select table_schema, table_name, column_name, data_type, is_nullable "
        "from information_schema.columns "
        "where table_schema not in ('pg_catalog', 'information_schema') "
        "order by 1, 2, 3"
    )
    engine = create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            columns = conn.execute(query).all()
    except OperationalError as exc:
        raise classify_connection_error(exc, url) from None
    finally:
        engine.dispose()
    digest = hashlib.sha256(repr(read_revision(url)).encode())
    for row in columns:
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def classify_connection_error(exc: OperationalError, url: str) -> Exception:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    lowered = reason.lower()
    where = safe_url(url)
    if "translate host name" in lowered or "name or service not known" in lowered:
        return ConfigurationError(
            f"database host in {where} is unknown ({reason}): fix the database URL "
            "in the environment's Secret block"
        )
    if "password authentication failed" in lowered or "no pg_hba.conf entry" in lowered:
        return AuthenticationError(
            f"database {where} refused the credentials ({reason}): fix the user/password "
            "in the environment's Secret block"
        )
    if "does not exist" in lowered:
        return ConfigurationError(f"database {where}: {reason}; create it or fix the URL")
    return TransientError(f"database {where} unreachable: {reason}")


# What a PostgreSQL client prints when its connection is cut (server restart, failover,
# pg_terminate_backend, network loss): not an error of the migration itself.
_CONNECTION_LOST = (
    "terminating connection due to administrator command",
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "consuming input failed",
    "the connection is lost",
    "connection refused",
)


def connection_lost(output: str) -> bool:
    """Whether a failed database client's output says its connection was cut."""
    lowered = output.lower()
    return any(marker in lowered for marker in _CONNECTION_LOST)


# Alembic's `context` and `op` are process-wide proxies: one in-process run at a time.
_ALEMBIC = threading.Lock()


def alembic_in_process(script_location: str, url: str, action: str, revision: str) -> None:
    """Run `alembic upgrade|downgrade REVISION` from source in this process (no image):
    the release ledger's own schema, development and rehearsals. The application's
    production migrations run in the new image."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["skip_logging_config"] = True
    engine = create_engine(sqlalchemy_url(url))
    try:
        with _ALEMBIC, engine.begin() as conn:
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)
    except OperationalError as exc:
        raise classify_connection_error(exc, url) from None
    finally:
        engine.dispose()
