"""The release flow and its rollback on the local Docker host, against real services."""

import httpx
import pytest
from prefect import task
from prefect_docker import DockerRegistryCredentials

from flows.record import load_record
from flows.release import ReleaseFailed, release
from flows.rollback import rollback
from targets.docker_host import L_ENV, L_SERVICE, L_VERSION
from targets.errors import AuthenticationError, ConfigurationError, StepFailed
from tests.conftest import backend_context
from tests.faults import FlakyProxy
from tests.releases import release_from, served_version, task_run_counts

pytestmark = pytest.mark.docker


@pytest.fixture
def environment(make_env, database):
    env = make_env(database, worker_count=2)
    env.save(env.environment, overwrite=True)
    return env


def running(engine, env, service: str) -> list:
    filters = {"label": [f"{L_ENV}={env.environment}", f"{L_SERVICE}={service}"]}
    return engine.containers.list(filters=filters)


def schema(pg, database) -> str | None:
    rows = pg.query(database, "select version_num from alembic_version")
    return rows[0][0] if rows else None


def test_release_v1_then_v2(environment, engine, pg, database, tmp_path):
    first = release_from(environment, tmp_path, "v1", head="0002")
    assert first["outcome"] == "released"
    assert served_version(environment) == "v1"
    assert schema(pg, database) == "0002"

    second = release_from(environment, tmp_path, "v2", head="0003")

    assert second["outcome"] == "released"
    assert (second["schema_before"], second["schema_after"]) == ("0002", "0003")
    assert served_version(environment) == "v2"
    assert [w.labels[L_VERSION] for w in running(engine, environment, "worker")] == ["v2", "v2"]
    assert schema(pg, database) == "0003"
    everything = engine.containers.list(
        all=True, filters={"label": f"{L_ENV}={environment.environment}"}
    )
    assert {c.name for c in everything} == {
        f"{environment.environment}-api",
        f"{environment.environment}-worker-0",
        f"{environment.environment}-worker-1",
    }  # the previous API is retired once the new one is verified


def test_same_release_twice_is_a_no_op(environment, engine, tmp_path):
    source = backend_context(tmp_path, "0003")
    release(environment.environment, source=str(source), version="same")
    api = running(engine, environment, "api")[0].id

    again = release(environment.environment, source=str(source), version="same")

    assert again["outcome"] == "no-op"
    assert "nothing to do" in again["message"]
    assert running(engine, environment, "api")[0].id == api


@pytest.mark.faults
def test_unhealthy_v2_is_rolled_back_to_v1_with_data_intact(
    environment, engine, pg, database, tmp_path
):
    release_from(environment, tmp_path, "v1", head="0002")
    created = httpx.post(
        f"http://127.0.0.1:{environment.api_port}/projects",
        json={"name": "written under v1"},
        timeout=5,
    )
    assert created.status_code == 201
    api_before = running(engine, environment, "api")[0].id

    with pytest.raises(ReleaseFailed) as info:
        release_from(environment, tmp_path, "v2", head="0003", fail_health="1")

    message = str(info.value)
    assert "failed at step 'verify-api'" in message
    assert "HTTP 503" in message
    assert "Rolled back and verified" in message
    assert served_version(environment) == "v1"
    assert running(engine, environment, "api")[0].id == api_before  # restarted, not rebuilt
    assert [w.labels[L_VERSION] for w in running(engine, environment, "worker")] == ["v1", "v1"]
    assert schema(pg, database) == "0002"
    assert pg.query(database, "select name from projects") == [("written under v1",)]


@pytest.mark.faults
@pytest.mark.migrations
def test_migration_failing_midway_restores_the_schema_and_touches_nothing_else(
    environment, engine, pg, database, tmp_path
):
    release_from(environment, tmp_path, "v1", head="0001")
    api_before = running(engine, environment, "api")[0].id
    workers_before = sorted(w.id for w in running(engine, environment, "worker"))
    environment.migration_rehearsal = False  # the rehearsal would catch the failure first
    environment.save(environment.environment, overwrite=True)

    with pytest.raises(ReleaseFailed) as info:
        release_from(environment, tmp_path, "v2", head="0003", fail_migration="0003")

    message = str(info.value)
    assert "failed at step 'migrate'" in message
    assert "injected failure in migration 0003" in message
    assert "schema back to 0001" in message
    assert schema(pg, database) == "0001"
    assert running(engine, environment, "api")[0].id == api_before
    assert sorted(w.id for w in running(engine, environment, "worker")) == workers_before
    assert served_version(environment) == "v1"


@pytest.fixture
def flaky_registry(registry):
    host, port = registry.address.split(":")
    proxy = FlakyProxy((host, int(port)), drop=2)
    yield proxy
    proxy.close()


@pytest.mark.faults
def test_transient_registry_errors_are_retried_and_the_release_succeeds(
    make_env, database, registry, flaky_registry, tmp_path
):
    address = f"127.0.0.1:{flaky_registry.port}"
    env = make_env(
        database,
        image_repository=f"{address}/tests/backend",
        registry_credentials=DockerRegistryCredentials(
            username=registry.username, password=registry.password, registry_url=address
        ),
    )
    env.save(env.environment, overwrite=True)

    state = release(
        env.environment, source=str(backend_context(tmp_path)), version="flaky", return_state=True
    )

    assert state.is_completed(), state.message
    assert flaky_registry.dropped == 2
    assert served_version(env) == "flaky"
    assert task_run_counts(state.state_details.flow_run_id)["push"] > 1


@pytest.mark.faults
def test_a_release_whose_process_died_is_undone_by_the_rollback_flow(
    environment, engine, pg, database, tmp_path, monkeypatch
):
    release_from(environment, tmp_path, "v1", head="0002")

    def process_dies(*args, **kwargs):
        raise KeyboardInterrupt("the worker running the release was killed")

    monkeypatch.setattr("flows.release.verify_api", task(name="verify-api")(process_dies))
    with pytest.raises(BaseException):  # noqa: B017 - whatever the interruption looks like
        release_from(environment, tmp_path, "v2", head="0003")
    assert running(engine, environment, "api")[0].labels[L_VERSION] == "v2"  # left half-done
    assert schema(pg, database) == "0003"

    restored = rollback(environment.environment)

    assert restored[0].startswith("API back to 1 x v1")
    assert served_version(environment) == "v1"
    assert [w.labels[L_VERSION] for w in running(engine, environment, "worker")] == ["v1", "v1"]
    assert schema(pg, database) == "0002"
    assert load_record(environment.environment) is None  # the next release may start


def test_bad_input_fails_before_any_mutation(environment, engine, pg, database, tmp_path):
    release_from(environment, tmp_path, "v1", head="0002")
    mine = {"label": f"{L_ENV}={environment.environment}"}
    before = sorted(c.id for c in engine.containers.list(all=True, filters=mine))

    with pytest.raises(ConfigurationError, match="unknown environment 'nowhere'"):
        release("nowhere", source=str(tmp_path))
    with pytest.raises(ConfigurationError, match="invalid image reference"):
        release(environment.environment, image="127.0.0.1:5000/Tests/Backend:v2")
    with pytest.raises(ConfigurationError, match="build context .* does not exist"):
        release(environment.environment, source=str(tmp_path / "missing"))
    wrong = environment.model_copy(
        update={
            "registry_credentials": DockerRegistryCredentials(
                username="release",
                password="wrong",
                registry_url=environment.registry_credentials.registry_url,
            )
        }
    )
    wrong.save(environment.environment, overwrite=True)
    with pytest.raises(AuthenticationError, match="refused the credentials"):
        release_from(environment, tmp_path, "v2", head="0003")

    assert sorted(c.id for c in engine.containers.list(all=True, filters=mine)) == before
    assert schema(pg, database) == "0002"
    assert served_version(environment) == "v1"
    assert load_record(environment.environment) is None


@pytest.mark.faults
def test_a_failing_rollback_says_what_state_the_environment_is_in(
    environment, engine, pg, database, tmp_path, monkeypatch
):
    release_from(environment, tmp_path, "v1", head="0002")

    def engine_gone(*args, **kwargs):
        raise StepFailed("the Docker engine stopped answering")

    monkeypatch.setattr("flows.rollback.restore_workers", task(name="restore-workers")(engine_gone))
    with pytest.raises(ReleaseFailed) as info:
        release_from(environment, tmp_path, "v2", head="0003", fail_health="1")

    message = str(info.value)
    assert "failed at step 'verify-api'" in message
    assert "FAILED at 'workers back to 2 x v1" in message
    assert "the Docker engine stopped answering" in message
    assert "Done before that: API back to 1 x v1" in message
    assert "Environment now: API 1 x v1" in message
    assert "workers 2 x v2" in message
    assert "schema at 0003" in message
    assert load_record(environment.environment) is not None  # kept for a second attempt

    monkeypatch.undo()
    rollback(environment.environment)

    assert served_version(environment) == "v1"
    assert [w.labels[L_VERSION] for w in running(engine, environment, "worker")] == ["v1", "v1"]
    assert schema(pg, database) == "0002"
    assert load_record(environment.environment) is None
