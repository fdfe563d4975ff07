import pytest
from prefect.blocks.system import Secret

from blocks.environment import connect_target
from targets.database import alembic_in_process, read_revision
from targets.docker_host import L_ENV
from targets.errors import ConfigurationError, MigrationFailed
from tasks.migrate import downgrade, migrate
from tests.conftest import BACKEND
from tests.releases import schema

pytestmark = [pytest.mark.migrations, pytest.mark.docker]


def tables(pg, database) -> set[str]:
    rows = pg.query(database, "select tablename from pg_tables where schemaname = 'public'")
    return {r[0] for r in rows}


def test_migrate_from_empty_runs_the_new_image_to_head(pg, database, make_env, build_backend):
    env = make_env(database)
    result = migrate(env, connect_target(env), build_backend("m-v3"))
    assert (result.before, result.after) == (None, "0003")
    assert {"projects", "test_sets", "alembic_version"} <= tables(pg, database)


def test_migrate_from_a_middle_revision(pg, database, make_env, build_backend):
    url = pg.url(database)
    alembic_in_process(str(BACKEND / "migrations"), url, "upgrade", "0001")
    assert read_revision(url) == "0001"

    env = make_env(database)
    result = migrate(env, connect_target(env), build_backend("m-v3"))

    assert (result.before, result.after) == ("0001", "0003")


def test_failed_migration_stops_at_the_last_good_revision(pg, database, make_env, build_backend):
    broken = build_backend("m-broken", fail_migration="0002")
    env = make_env(database)
    with pytest.raises(MigrationFailed) as info:
        migrate(env, connect_target(env), broken)
    error = info.value
    assert (error.before, error.after) == (None, "0001")
    assert "left at 0001" in str(error)
    assert "injected failure in migration 0002" in str(error)  # Alembic's own error text
    assert schema(pg, database) == "0001"
    assert "test_sets" not in tables(pg, database)  # the failed revision left nothing behind


def test_downgrade_lands_on_the_exact_revision(pg, database, make_env, build_backend):
    env = make_env(database)
    image = build_backend("m-v3")
    target = connect_target(env)
    migrate(env, target, image)
    pg.query(database, "insert into projects (name) values ('kept') returning id")

    result = downgrade(env, target, image, "0001")

    assert (result.before, result.after) == ("0003", "0001")
    assert pg.query(database, "select name from projects") == [("kept",)]


def test_unknown_database_host_is_a_clear_error(make_env, database, build_backend, engine):
    env = make_env(database, database_url=Secret(value="postgresql://u:s3cr3t@db.invalid:5432/x"))
    mine = {"label": f"{L_ENV}={env.environment}"}

    with pytest.raises(ConfigurationError, match="host .* is unknown.*Secret block") as info:
        migrate(env, connect_target(env), build_backend("m-v3"))

    assert "s3cr3t" not in str(info.value)
    assert engine.containers.list(all=True, filters=mine) == []  # nothing was started
