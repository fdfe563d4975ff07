"""The release flow and its rollback on the local Docker host, against real services."""

import threading
import time

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect_docker import DockerRegistryCredentials

from flows.lock import in_flight
from flows.release import release
from targets.docker_host import L_ENV, L_VERSION
from targets.errors import AuthenticationError, ConfigurationError
from tests.conftest import backend_context
from tests.releases import refused, release_from, running, schema, served_version

pytestmark = pytest.mark.docker


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
    progress = latest_artifact(f"progress-{environment.environment}")
    assert (progress.type, progress.data) == ("progress", 100.0)
    summary = latest_artifact(f"release-{environment.environment}").data
    assert "| step | start | duration | outcome | timeline |" in summary
    assert "| verify-api |" in summary and "█" in summary


def latest_artifact(key: str):
    with get_client(sync_client=True) as client:
        return next(a for a in client.read_latest_artifacts() if a.key == key)


def test_same_release_twice_is_a_no_op(environment, engine, tmp_path):
    source = backend_context(tmp_path, "0003")
    release(environment.environment, source=str(source), version="same")
    api = running(engine, environment, "api")[0].id

    again = release(environment.environment, source=str(source), version="same")

    assert again["outcome"] == "no-op"
    assert "nothing to do" in again["message"]
    assert running(engine, environment, "api")[0].id == api


def test_bad_input_fails_before_any_mutation(environment, engine, pg, database, tmp_path):
    release_from(environment, tmp_path, "v1", head="0002")
    mine = {"label": f"{L_ENV}={environment.environment}"}
    before = sorted(c.id for c in engine.containers.list(all=True, filters=mine))

    with refused(ConfigurationError, match="unknown environment 'nowhere'"):
        release("nowhere", source=str(tmp_path))
    with refused(ConfigurationError, match="invalid image reference"):
        release(environment.environment, image="127.0.0.1:5000/Tests/Backend:v2")
    with refused(ConfigurationError, match="build context .* does not exist"):
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
    with refused(AuthenticationError, match="refused the credentials"):
        release_from(environment, tmp_path, "v2", head="0003")

    assert sorted(c.id for c in engine.containers.list(all=True, filters=mine)) == before
    assert schema(pg, database) == "0002"
    assert served_version(environment) == "v1"
    assert in_flight(environment.environment) is None


def test_requests_in_flight_when_the_api_is_replaced_are_answered(make_env, database, tmp_path):
    """The candidate starts as soon as the previous API stops listening, while that one
    still finishes the requests it took: callers see at worst a refused connection, never
    one dropped halfway."""
    slow = {"BACKEND_HEALTH_DELAY": "1"}  # each /health takes 1 s: some are always in flight
    env = make_env(database, worker_count=1, env=slow, health_request_timeout_seconds=3)
    env.save(env.environment, overwrite=True)
    release_from(env, tmp_path, "v1")
    url = f"http://127.0.0.1:{env.api_port}/health"
    answers, failures, done = [], [], threading.Event()

    def call_again_and_again() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                try:
                    response = client.get(url, headers={"Connection": "close"})
                except httpx.ConnectError:
                    time.sleep(0.05)  # nobody listens for a moment: refused, not dropped
                    continue
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                answers.append((time.monotonic(), response.status_code, response.json()))

    callers = [threading.Thread(target=call_again_and_again) for _ in range(4)]
    for caller in callers:
        caller.start()
        time.sleep(0.25)  # staggered: one of them is always mid-request
    try:
        second = release_from(env, tmp_path, "v2")
    finally:
        done.set()
        for caller in callers:
            caller.join()

    assert second["outcome"] == "released"
    assert not failures, failures
    assert {status for _, status, _ in answers} == {200}
    versions = [body["version"] for _, _, body in sorted(answers, key=lambda a: a[0])]
    assert "v1" in versions and versions[-1] == "v2"
