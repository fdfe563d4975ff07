"""A check never changes what it checks: the migration rehearsal (in a release, and in `plan`)
proves that its one-off talks to the scratch database before it changes anything, for
backends that read their database from other variables than DATABASE_URL; configured the
old way it refuses, and the real database keeps its revision, tables and rows."""

import httpx
import pytest

from blocks.application import ApplicationSpec, Database
from flows.lock import in_flight
from flows.plan import plan
from flows.release import release
from targets.database import alembic_in_process
from tasks.check_migrations import RehearsalNotIsolated
from tests.backend import BACKEND, URL_PARTS
from tests.releases import refused, running, schema, served_version

pytestmark = [pytest.mark.migrations, pytest.mark.docker]


def application_data(pg, database) -> dict:
    """What a migration could change in the application's own schema: the revision, every
    table's columns, every row (the release ledger keeps its own schema, outside this)."""
    columns = pg.query(
        database,
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_schema = 'public' order by 1, 2",
    )
    tables = {table for table, _, _ in columns}
    rows = {table: pg.query(database, f'select * from "{table}" order by 1') for table in tables}
    return {"revision": schema(pg, database), "columns": columns, "rows": rows}


@pytest.fixture
def at_0002_with_rows(pg, database) -> dict:
    """The real database as a release of 0002 left it, with rows the users wrote."""
    alembic_in_process(str(BACKEND / "migrations"), pg.url(database), "upgrade", "0002")
    pg.query(database, "insert into projects (name) values ('kept') returning id")
    return application_data(pg, database)


OLD_WAY = {
    "sqlalchemy-url": lambda url, parts: {"SQLALCHEMY_DATABASE_URL": url},
    "url-parts": lambda url, parts: parts,
}


def url_parts(pg, database) -> dict[str, str]:
    values = {"user": pg.user, "password": pg.password, "host": "127.0.0.1"}
    values |= {"port": str(pg.port), "database": database}
    return {name: values[part] for name, part in URL_PARTS.items()}


@pytest.mark.parametrize("reads", ["sqlalchemy-url", "url-parts"])
def test_configured_the_old_way_plan_and_release_refuse_and_the_database_is_untouched(
    reads, make_env, engine, pg, database, at_0002_with_rows, build_backend
):
    image = build_backend(f"iso-{reads}", reads_database=reads)
    plain = OLD_WAY[reads](pg.url(database), url_parts(pg, database))
    env = make_env(database, worker_count=0, env=plain)
    env.save(env.environment, overwrite=True)

    with refused(RehearsalNotIsolated) as planned:
        plan(env.environment, image=image)
    with refused(RehearsalNotIsolated) as released:
        release(env.environment, image=image)

    for refusal in (str(planned.value), str(released.value)):
        assert "migration rehearsal refused: the application in" in refusal
        assert refusal.endswith("Nothing was changed.")
        assert f"It most likely reads {', '.join(sorted(plain))}" in refusal
        assert "list it in the application spec's `database.url_variables`" in refusal
        assert pg.password not in refusal
    assert application_data(pg, database) == at_0002_with_rows
    assert running(engine, env, "api") == []
    assert in_flight(env.environment) is None


def test_configured_the_old_way_a_first_release_leaves_an_empty_database_empty(
    make_env, pg, database, build_backend
):
    image = build_backend("iso-sqlalchemy-url", reads_database="sqlalchemy-url")
    env = make_env(database, worker_count=0, env={"SQLALCHEMY_DATABASE_URL": pg.url(database)})
    env.save(env.environment, overwrite=True)

    with refused(RehearsalNotIsolated):
        release(env.environment, image=image)

    assert application_data(pg, database) == {"revision": None, "columns": [], "rows": {}}


@pytest.mark.parametrize(
    "reads, wiring",
    [
        ("sqlalchemy-url", Database(url_variables=["SQLALCHEMY_DATABASE_URL"])),
        ("url-parts", Database(url_variables=[], url_parts=URL_PARTS)),
    ],
)
def test_with_the_variables_named_the_rehearsal_runs_on_scratch_and_the_release_completes(
    reads, wiring, make_env, pg, database, build_backend
):
    v1 = build_backend(f"iso-{reads}-v1", head="0002", reads_database=reads)
    v2 = build_backend(f"iso-{reads}-v2", reads_database=reads)
    env = make_env(database, worker_count=1, application=ApplicationSpec(database=wiring))
    env.save(env.environment, overwrite=True)

    first = release(env.environment, image=v1)

    assert (first["outcome"], schema(pg, database)) == ("released", "0002")
    created = httpx.post(
        f"http://127.0.0.1:{env.api_port}/projects", json={"name": "written by a user"}, timeout=5
    )
    assert created.status_code == 201
    before = application_data(pg, database)

    planned = plan(env.environment, image=v2)

    assert (planned["verdict"], planned["schema"]["pending"]) == ("safe", ["0003"])
    assert application_data(pg, database) == before  # the rehearsal ran elsewhere

    second = release(env.environment, image=v2)

    assert (second["outcome"], schema(pg, database)) == ("released", "0003")
    assert served_version(env) == f"iso-{reads}-v2"
    assert pg.query(database, "select name from projects") == [("written by a user",)]
