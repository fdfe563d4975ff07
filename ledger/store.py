"""Reading and writing the ledger (Prefect-free: SQLAlchemy Core on the environment's
database). The table comes from the ledger's own Alembic revisions, applied on first use."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from targets.database import alembic_in_process, classify_connection_error, sqlalchemy_url

MIGRATIONS = str(Path(__file__).with_name("migrations"))
IN_PROGRESS = "in progress"
# Outcomes after which the environment's state is not what the entry expected.
UNKNOWN_STATE = (IN_PROGRESS, "rollback failed")

_table = Table(
    "releases",
    MetaData(schema="release_ledger"),
    Column("id", String(36), primary_key=True),
    Column("environment", String(128)),
    Column("kind", String(16)),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("started_by", String(200)),
    Column("flow_run_id", String(36)),
    Column("flow_run_url", Text),
    Column("source", Text),
    Column("version", String(200)),
    Column("image", Text),
    Column("previous_version", String(200)),
    Column("previous_image", Text),
    Column("schema_before", String(64)),
    Column("schema_after", String(64)),
    Column("workers_before", Integer),
    Column("workers_after", Integer),
    Column("outcome", String(32)),
    Column("message", Text),
    Column("steps", JSON),
    Column("rollback", JSON),
    Column("expected", JSON),
)


@dataclass
class Expected:
    """What should run in the environment after an entry ended."""

    image: str | None
    workers: int
    schema: str | None


@dataclass
class Entry:
    environment: str
    kind: str  # "release" | "restore" (a rollback to an earlier release)
    started_by: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    source: str | None = None
    version: str | None = None
    image: str | None = None
    previous_version: str | None = None
    previous_image: str | None = None
    schema_before: str | None = None
    schema_after: str | None = None
    workers_before: int | None = None
    workers_after: int | None = None
    outcome: str = IN_PROGRESS
    message: str | None = None
    steps: list[dict] = field(default_factory=list)
    rollback: list[str] = field(default_factory=list)
    expected: Expected | None = None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def row(self) -> dict:
        data = asdict(self)
        data["expected"] = asdict(self.expected) if self.expected else None
        return data

    @classmethod
    def from_row(cls, row) -> "Entry":
        data = dict(row._mapping)
        data["expected"] = Expected(**data["expected"]) if data["expected"] else None
        return cls(**{f.name: data[f.name] for f in fields(cls)})


class Ledger:
    """The ledger in one environment's database."""

    _migrated: set[str] = set()  # URLs whose ledger schema is at head in this process

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": 5})
        if url not in Ledger._migrated:
            alembic_in_process(MIGRATIONS, url, "upgrade", "head")
            Ledger._migrated.add(url)

    def add(self, entry: Entry) -> Entry:
        with self._begin() as conn:
            conn.execute(_table.insert().values(**entry.row()))
        return entry

    def save(self, entry: Entry) -> None:
        """Write every field of an entry added before (the flows update it as they go)."""
        with self._begin() as conn:
            conn.execute(update(_table).where(_table.c.id == entry.id).values(**entry.row()))

    def history(self, environment: str, limit: int = 20) -> list[Entry]:
        """The newest entries of `environment` first."""
        query = (
            select(_table)
            .where(_table.c.environment == environment)
            .order_by(_table.c.started_at.desc())
            .limit(limit)
        )
        with self._begin() as conn:
            return [Entry.from_row(row) for row in conn.execute(query)]

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise classify_connection_error(exc, self.url) from None


def baseline(entries: list[Entry]) -> Entry | None:
    """The entry that says what should run now: the newest one that ended, skipping
    failures that changed nothing and never saw the environment (no expected state)."""
    for entry in entries:
        if entry.outcome == IN_PROGRESS:
            continue
        if entry.expected is None and entry.outcome not in UNKNOWN_STATE:
            continue
        return entry
    return None
