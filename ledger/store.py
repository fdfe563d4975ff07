"""Reading and writing the ledger (Prefect-free: SQLAlchemy Core on the environment's
database). The table is defined once, by the ledger's own Alembic revisions (applied on
first use); this module reflects it rather than declaring it a second time."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import MetaData, Table, create_engine, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from ledger.record import IN_PROGRESS, UNKNOWN_STATE, ReleaseRecord
from targets.database import alembic_in_process, classify_connection_error, sqlalchemy_url

MIGRATIONS = str(Path(__file__).with_name("migrations"))
SCHEMA = "release_ledger"


class Ledger:
    """The ledger in one environment's database: `with Ledger(url) as ledger: ...`."""

    _migrated: set[str] = set()  # URLs whose ledger schema is at head in this process
    _table: Table | None = None  # reflected once: every ledger is at the same head

    def __init__(self, url: str):
        self.url = url
        self.database = create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": 5})
        if url not in Ledger._migrated:
            alembic_in_process(MIGRATIONS, url, "upgrade", "head")
            Ledger._migrated.add(url)

    def add(self, record: ReleaseRecord) -> None:
        with self._begin() as conn:
            conn.execute(self._releases(conn).insert().values(**record.row()))

    def save(self, record: ReleaseRecord) -> None:
        """Write every field of a record added before (the flows update it as they go)."""
        with self._begin() as conn:
            table = self._releases(conn)
            conn.execute(update(table).where(table.c.id == record.id).values(**record.row()))

    def history(self, environment: str, limit: int = 20) -> list[ReleaseRecord]:
        """The newest records of `environment` first."""
        with self._begin() as conn:
            table = self._releases(conn)
            query = (
                select(table)
                .where(table.c.environment == environment)
                .order_by(table.c.started_at.desc())
                .limit(limit)
            )
            return [ReleaseRecord.model_validate(dict(row._mapping)) for row in conn.execute(query)]

    def find(self, environment: str, record_id: str) -> ReleaseRecord | None:
        return next((r for r in self.history(environment, limit=200) if r.id == record_id), None)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *_) -> None:
        self.database.dispose()

    @staticmethod
    def _releases(conn: Connection) -> Table:
        if Ledger._table is None:
            Ledger._table = Table("releases", MetaData(schema=SCHEMA), autoload_with=conn)
        return Ledger._table

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.database.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise classify_connection_error(exc, self.url) from None


def baseline(records: list[ReleaseRecord]) -> ReleaseRecord | None:
    """The record that says what should run now: the newest one that ended, skipping
    failures that changed nothing and never saw the environment (no expected state)."""
    for record in records:
        if record.outcome == IN_PROGRESS:
            continue
        if record.expected is None and record.outcome not in UNKNOWN_STATE:
            continue
        return record
    return None
