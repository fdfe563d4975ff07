"""Fault injection on the Docker-host target, by real means (proxies on 127.0.0.1, broken
images, pg_terminate_backend, SIGKILL). Each scenario releases v1 (2 workers, rows written
through the API), then a faulty v2, and ends either released after retries or rolled back
with v1 serving, 2 v1 workers, the recorded schema revision and every row kept.

The last test scans every log line, artifact, state message and exception text of the
session for secrets.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect_docker import DockerHost, DockerRegistryCredentials

from flows.errors import ReleaseFailed
from flows.lock import in_flight
from flows.release import release
from flows.rollback import rollback
from targets.docker_host import L_ENV, L_IMAGE, L_SERVICE, L_VERSION
from targets.errors import ConfigurationError, TransientError
from tests.backend import backend_context
from tests.faults import HttpFaultProxy
from tests.releases import every, release_from, running, schema, served_version, task_run_counts
from tests.services import free_port

# One worker runs them all: the last one scans what the others left for secrets.
pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.xdist_group("faults")]

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["written under v1", "also under v1"]
# Everything the fault tests saw that a user would read: scanned for secrets at the end.
SEEN: list[str] = []
DATABASE_URLS: list[str] = []


def start_v1(make_env, database, tmp_path, head="0002", **overrides):
    """An environment serving v1 with 2 workers and ROWS written through its API."""
    env = make_env(database, worker_count=2, **overrides)
    env.save(env.environment, overwrite=True)
    DATABASE_URLS.append(env.database_url_value())
    assert release_from(env, tmp_path, "v1", head=head)["outcome"] == "released"
    for name in ROWS:
        created = httpx.post(
            f"http://127.0.0.1:{env.api_port}/projects", json={"name": name}, timeout=5
        )
        assert created.status_code == 201, created.text
    return env


def release_v2(env, tmp_path, **faults):
    """Release v2 (head 0003, `faults` baked into the image); its final state."""
    source = backend_context(tmp_path / "v2", "0003", **faults)
    return release(env.environment, source=str(source), version="v2", return_state=True)


def failure(state) -> Exception:
    """The exception a failed release ended with (kept for the secrets scan)."""
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    SEEN.extend([str(error), state.message or ""])
    return error


def assert_serving(env, engine, pg, database, version: str, revision: str) -> None:
    """What a user checks: /health, the workers, the schema revision, the rows."""
    assert served_version(env) == version
    assert [w.labels[L_VERSION] for w in running(engine, env, "worker")] == [version] * 2
    assert schema(pg, database) == revision
    assert pg.query(database, "select name from projects order by id") == [(n,) for n in ROWS]
    assert in_flight(env.environment) is None  # the next release may start


def containers(engine, env) -> list[tuple[str, str]]:
    found = engine.containers.list(all=True, filters={"label": f"{L_ENV}={env.environment}"})
    return sorted((c.id, c.status) for c in found)


@pytest.fixture
def registry_proxy(registry):
    host, port = registry.address.split(":")
    proxy = HttpFaultProxy((host, int(port)))
    yield proxy
    proxy.close()


def through(proxy: HttpFaultProxy, registry) -> dict:
    """Environment fields that push and pull through `proxy` instead of the registry."""
    address = f"127.0.0.1:{proxy.port}"
    return dict(
        image_repository=f"{address}/tests/backend-{uuid.uuid4().hex[:8]}",
        registry_credentials=DockerRegistryCredentials(
            username=registry.username, password=registry.password, registry_url=address
        ),
    )


REGISTRY_UNAVAILABLE = {"errors": [{"code": "UNAVAILABLE", "message": "injected: try later"}]}


@pytest.mark.parametrize(
    "fault",
    [
        lambda proxy: proxy.fail("503 Service Unavailable", REGISTRY_UNAVAILABLE, times=2),
        lambda proxy: proxy.reset(times=2),
    ],
    ids=["503-then-recovers", "connections-reset-then-recovers"],
)
def test_registry_failing_for_a_while_is_retried_and_the_release_succeeds(
    fault, make_env, database, registry, registry_proxy, engine, pg, tmp_path
):
    env = start_v1(make_env, database, tmp_path, **through(registry_proxy, registry))
    fault(registry_proxy)

    state = release_v2(env, tmp_path)

    assert state.is_completed(), state.message
    assert len(registry_proxy.injected) == 2
    assert task_run_counts(state.state_details.flow_run_id)["push"] > 1
    assert_serving(env, engine, pg, database, "v2", "0003")


def test_registry_down_for_good_fails_before_any_change(
    make_env, database, registry, engine, pg, tmp_path
):
    env = start_v1(make_env, database, tmp_path)
    before = containers(engine, env)
    closed = f"127.0.0.1:{free_port()}"
    gone = env.model_copy(
        update={
            "image_repository": f"{closed}/tests/backend",
            "registry_credentials": DockerRegistryCredentials(
                username=registry.username, password=registry.password, registry_url=closed
            ),
        }
    )
    gone.save(env.environment, overwrite=True)

    state = release_v2(env, tmp_path)

    error = failure(state)
    assert isinstance(error.cause, TransientError) and not error.changed
    assert f"registry {closed} is unavailable" in str(error)
    assert "connection refused" in str(error)
    counts = task_run_counts(state.state_details.flow_run_id)
    assert counts["push"] == 4  # tried, then retried 3 times
    assert not {"migrate", "deploy-api", "scale-workers"} & counts.keys()
    assert containers(engine, env) == before
    assert_serving(env, engine, pg, database, "v1", "0002")


@pytest.fixture
def engine_proxy():
    proxy = HttpFaultProxy("/var/run/docker.sock")
    yield proxy
    proxy.close()


def creating(name: str | None = None, image: str | None = None):
    """Match the engine's `POST /containers/create` of container `name` or of `image`."""

    def match(method: str, target: str, body: bytes) -> bool:
        url = urlsplit(target)
        if method != "POST" or not url.path.endswith("/containers/create"):
            return False
        if name is not None:
            return parse_qs(url.query).get("name") == [name]
        return json.loads(body).get("Image") == image

    return match


ENGINE_FAILED = {"message": "injected: the engine failed to create the container"}


def test_engine_errors_mid_deploy_are_retried_and_the_release_succeeds(
    make_env, database, engine_proxy, engine, pg, tmp_path
):
    docker_host = DockerHost(base_url=f"tcp://127.0.0.1:{engine_proxy.port}")
    env = start_v1(make_env, database, tmp_path, docker_host=docker_host)
    api, first_worker = f"{env.environment}-api", f"{env.environment}-worker-0"
    engine_proxy.fail("500 Internal Server Error", ENGINE_FAILED, match=creating(api))
    engine_proxy.fail("500 Internal Server Error", ENGINE_FAILED, match=creating(first_worker))

    state = release_v2(env, tmp_path)

    assert state.is_completed(), state.message
    assert len(engine_proxy.injected) == 2
    counts = task_run_counts(state.state_details.flow_run_id)
    assert (counts["deploy-api"], counts["scale-workers"]) == (2, 2)
    assert_serving(env, engine, pg, database, "v2", "0003")


def test_a_failing_rollback_says_what_state_the_environment_is_in(
    make_env, database, engine_proxy, engine, pg, tmp_path
):
    docker_host = DockerHost(base_url=f"tcp://127.0.0.1:{engine_proxy.port}")
    env = start_v1(make_env, database, tmp_path, docker_host=docker_host)
    v1_image = running(engine, env, "worker")[0].labels[L_IMAGE]
    # The engine refuses to create any v1 container: the rollback cannot restore the workers.
    engine_proxy.fail("500 Internal Server Error", ENGINE_FAILED, 99, creating(image=v1_image))

    message = str(failure(release_v2(env, tmp_path, fail_health="1")))

    assert "failed at step 'verify-api'" in message
    assert "FAILED at 'workers back to 2 x v1" in message
    assert "injected: the engine failed to create the container" in message
    assert "Done before that: API back to 1 x v1" in message
    assert "Environment now: API 1 x v1" in message
    assert "workers nothing running" in message
    assert "schema at 0003" in message
    assert in_flight(env.environment) is not None  # kept for a second attempt

    engine_proxy.clear()
    rollback(env.environment)

    assert_serving(env, engine, pg, database, "v1", "0002")


def terminate_sleeping_migration(pg, database: str, stop: threading.Event) -> list[int]:
    """Poll for the migration's `select pg_sleep(...)`, terminate its backend once; the pids
    terminated (run in a thread while the release runs)."""
    terminated: list[int] = []

    def poll() -> None:
        while not stop.is_set() and not terminated:
            rows = pg.query(
                database,
                "select pg_terminate_backend(pid), pid from pg_stat_activity where datname = %s"
                " and state = 'active' and query like 'select pg_sleep(%%'"
                " and pid <> pg_backend_pid()",
                database,
            )
            terminated.extend(pid for ok, pid in rows if ok)
            stop.wait(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return terminated


@pytest.mark.migrations
def test_database_connection_dropped_during_the_migration_is_retried(
    make_env, database, engine, pg, tmp_path
):
    # The rehearsal would run (and sleep in) the migration first, on a scratch database.
    env = start_v1(make_env, database, tmp_path, migration_rehearsal=False)
    stop = threading.Event()
    terminated = terminate_sleeping_migration(pg, database, stop)

    state = release_v2(env, tmp_path, migration_delay="3")
    stop.set()

    assert len(terminated) == 1  # the first migration's connection was cut mid-revision
    assert state.is_completed(), state.message
    assert task_run_counts(state.state_details.flow_run_id)["migrate"] == 2
    assert_serving(env, engine, pg, database, "v2", "0003")


@pytest.mark.migrations
def test_migration_failing_midway_restores_the_schema_and_touches_nothing_else(
    make_env, database, engine, pg, tmp_path
):
    env = start_v1(make_env, database, tmp_path, head="0001", migration_rehearsal=False)
    before = containers(engine, env)

    error = failure(release_v2(env, tmp_path, fail_migration="0003"))

    assert isinstance(error, ReleaseFailed)
    message = str(error)

    assert "failed at step 'migrate'" in message
    assert "injected failure in migration 0003" in message
    assert "schema back to 0001" in message
    assert containers(engine, env) == before
    assert_serving(env, engine, pg, database, "v1", "0001")


API_FAULTS = {
    "crashes-after-starting": (dict(crash_after="0.5"), {}, "not healthy within"),
    "health-reports-database-down": (
        dict(health_database_down="1"),
        {},
        'HTTP 503 {"status":"unhealthy","version":"v2","database":false}',
    ),
    "health-slower-than-request-timeout": (
        dict(health_delay="3"),
        dict(health_request_timeout_seconds=1),
        "last answer: ReadTimeout",
    ),
    "health-answers-503": (dict(fail_health="1"), {}, "HTTP 503"),
}


@pytest.mark.parametrize("faults, overrides, evidence", API_FAULTS.values(), ids=API_FAULTS)
def test_a_failing_api_is_rolled_back_to_v1_with_data_intact(
    faults, overrides, evidence, make_env, database, engine, pg, tmp_path
):
    env = start_v1(make_env, database, tmp_path, **overrides)
    api_before = running(engine, env, "api")[0].id
    since = int(time.time())

    error = failure(release_v2(env, tmp_path, **faults))

    assert isinstance(error, ReleaseFailed)
    message = str(error)

    assert "failed at step 'verify-api'" in message
    assert evidence in message
    assert "Rolled back and verified" in message
    assert running(engine, env, "api")[0].id == api_before  # restarted, not rebuilt
    assert_serving(env, engine, pg, database, "v1", "0002")
    died = engine.events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"event": "die", "label": [f"{L_ENV}={env.environment}", f"{L_VERSION}=v2"]},
    )
    exit_codes = {e["Actor"]["Attributes"]["exitCode"] for e in died}
    assert ("3" in exit_codes) == ("crash_after" in faults)  # the injected crash, and only it


KILLABLE_RELEASE = (
    "import sys; from flows.release import release; "
    "release(sys.argv[1], source=sys.argv[2], version='v2')"
)


def test_a_release_killed_midway_is_undone_by_the_rollback_flow(
    make_env, database, engine, pg, tmp_path
):
    env = start_v1(make_env, database, tmp_path)
    source = backend_context(tmp_path / "v2", "0003")
    output = tmp_path / "killed-release.log"
    v2_api = {"label": [f"{L_ENV}={env.environment}", f"{L_SERVICE}=api", f"{L_VERSION}=v2"]}
    with output.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", KILLABLE_RELEASE, env.environment, str(source)],
            cwd=ROOT,
            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            while not engine.containers.list(all=True, filters=v2_api, ignore_removed=True):
                assert child.poll() is None, output.read_text()
                time.sleep(0.2)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    SEEN.append(output.read_text())
    assert child.returncode == -signal.SIGKILL
    assert schema(pg, database) == "0003"  # left half-done: migrated, v2 API created
    assert in_flight(env.environment).compensations

    restored = rollback(env.environment)

    assert restored[0].startswith("API back to 1 x v1")
    assert_serving(env, engine, pg, database, "v1", "0002")


def test_two_releases_started_together_one_runs_the_other_is_refused(
    make_env, database, engine, pg, tmp_path
):
    env = start_v1(make_env, database, tmp_path)
    versions = ["v2", "v2-rival"]
    sources = {v: str(backend_context(tmp_path / v, "0003")) for v in versions}
    together = threading.Barrier(len(versions))

    def start(version: str):
        together.wait()
        return release(env.environment, source=sources[version], version=version, return_state=True)

    with ThreadPoolExecutor(len(versions)) as pool:
        states = dict(zip(versions, pool.map(start, versions), strict=True))

    [winner] = [v for v, s in states.items() if s.is_completed()]
    [loser] = [v for v, s in states.items() if not s.is_completed()]
    refused = failure(states[loser])
    assert isinstance(refused.cause, ConfigurationError) and not refused.changed
    assert "already in flight" in str(refused)
    assert task_run_counts(states[loser].state_details.flow_run_id) == {}  # changed nothing
    assert_serving(env, engine, pg, database, winner, "0003")


def test_no_secret_in_any_log_artifact_state_or_error(pg, registry):
    """Runs last: everything the fault tests above made a user could read (flow-run
    parameters too: the compensating subflow takes the environment block)."""
    secrets = {"registry password": registry.password, "PostgreSQL password": pg.password}
    secrets |= {f"database URL {i}": url for i, url in enumerate(DATABASE_URLS)}
    texts = list(SEEN)
    with get_client(sync_client=True) as client:
        logs = every(client.read_logs)
        artifacts = every(client.read_artifacts)
        runs = every(client.read_flow_runs) + every(client.read_task_runs)
    texts += [log.message for log in logs]
    texts += [json.dumps(a.data) + json.dumps(a.description or "") for a in artifacts]
    texts += [run.state.message or "" for run in runs if run.state]
    texts += [json.dumps(run.parameters, default=str) for run in runs if hasattr(run, "parameters")]

    assert len(logs) > 500 and len(artifacts) > 10 and len(SEEN) > 10  # really read them
    assert all(len(secret) >= 8 for secret in secrets.values())
    leaks = {name for text in texts for name, secret in secrets.items() if secret in text}
    assert not leaks, f"found in logs, artifacts, states or errors: {sorted(leaks)}"
