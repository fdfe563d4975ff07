"""The three ways a release starts, against a real `prefect server start` (temporary SQLite
home, loopback port), a real `process` worker, the event bridge, and a second real
docker-registry whose push notifications go to the bridge.

Blocks, deployments and runs live on that server only: the session's test harness API is
left alone (the test process talks to this server through an explicit client).
"""

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prefect.blocks.system import Secret
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import PrefectHTTPStatusError
from prefect_docker import DockerRegistryCredentials

from blocks.environment import ReleaseEnvironment, connect_target
from deployments.push_events import (
    MalformedNotification,
    Push,
    from_artifact_registry,
    from_distribution,
    from_ecr,
)
from ledger.store import Ledger
from targets.docker_host import L_ENV
from targets.registry import login, push_image, registry_auth
from tests import services
from tests.releases import wait_until
from tests.stack import (
    RUN_TIMEOUT,
    VENV_BIN,
    Stack,
    completed,
    deploy,
    finished,
    logs,
    run,
    runs_of,
    start,
    start_bridge,
    start_registry,
    start_server,
    start_worker,
    subflows,
)

pytestmark = [pytest.mark.triggers, pytest.mark.xdist_group("triggers")]  # one Prefect stack

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DIGEST = "sha256:" + "ab" * 32


# --- the stack: server, worker, registry, bridge (tests/stack.py) ------------------------


@pytest.fixture(scope="module")
def server(processes, tmp_path_factory) -> Stack:
    return start_server(processes, tmp_path_factory.mktemp("prefect-server"), deployed=False)


@pytest.fixture(scope="module")
def stack(server, save_environment) -> Stack:
    """The server deployed from prefect.yaml once its environments exist (the form offers
    the Release Environment blocks that exist when `prefect deploy` runs)."""
    for name in ("staging", "production"):
        save_environment(name)
    deploy(server)
    return server


@pytest.fixture(scope="module")
def registry2(processes, server, registry) -> str:
    return start_registry(processes, server)


@pytest.fixture(scope="module")
def bridge(processes, stack, registry2) -> str:
    return start_bridge(processes, stack, f"{registry2}/tests/backend:main-*=staging")


@pytest.fixture(scope="module")
def worker(processes, stack) -> None:
    start_worker(processes, stack)


@pytest.fixture(scope="module")
def databases(pg) -> Iterator[dict[str, str]]:
    names = {"staging": pg.create_database(), "production": pg.create_database()}
    yield names
    for name in names.values():
        pg.drop_database(name)


@pytest.fixture(scope="module")
def save_environment(server, registry, registry2, pg, databases, engine):
    """Save the `staging` / `production` block on the stack's server (docker target, images
    from the second registry); containers are removed at the end of the module."""
    labels: set[str] = set()

    def save(name: str, suffix: str = "", **overrides) -> ReleaseEnvironment:
        env = ReleaseEnvironment(
            environment=f"{server.prefix}-{name}{suffix}",
            image_repository=f"{registry2}/tests/backend",
            registry_credentials=DockerRegistryCredentials(
                username=registry.username, password=registry.password, registry_url=registry2
            ),
            database_url=Secret(value=pg.url(databases[name])),
            api_port=services.free_port(),
            worker_count=0,
            health_budget_seconds=20,
            health_consecutive=2,
            health_interval_seconds=0.5,
            **overrides,
        )
        labels.add(env.environment)
        with server.settings():
            env.save(name, overwrite=True)
        return env

    yield save
    for label in labels:
        for container in engine.containers.list(all=True, filters={"label": f"{L_ENV}={label}"}):
            container.remove(force=True)


@pytest.fixture(scope="module")
def image(stack, registry, registry2, engine, build_backend) -> str:
    """The backend in the second registry, under a tag no route maps (no release)."""
    return push_to(engine, registry, registry2, build_backend("trg-v1"), "base")


def push_to(engine, registry, address: str, pinned: str, tag: str) -> str:
    auth = registry_auth(registry.username, registry.password)
    login(engine, address, auth)
    reference = f"{address}/tests/backend:{tag}"
    engine.images.get(pinned).tag(reference)
    pushed, _ = push_image(engine, reference, auth, lambda _: None)
    return pushed


def served_version(env: ReleaseEnvironment) -> str:
    response = httpx.get(f"http://127.0.0.1:{env.api_port}/health", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def distribution_envelope(host: str, tag: str, digest: str, action: str = "push") -> dict:
    return {
        "events": [
            {
                "id": str(uuid.uuid4()),
                "action": action,
                "target": {
                    "mediaType": MANIFEST,
                    "digest": digest,
                    "repository": "tests/backend",
                    "tag": tag,
                    "url": f"http://{host}/v2/tests/backend/manifests/{digest}",
                },
                "request": {"host": host, "method": "PUT"},
                "actor": {"name": "release"},
            }
        ]
    }


# --- deployments from prefect.yaml -------------------------------------------------------


def test_deploy_all_registers_the_nightly_schedule_and_the_push_trigger(stack):
    with stack.client() as client:
        nightly = client.read_deployment_by_name("nightly-staging/nightly-staging")
        pushed = client.read_deployment_by_name("release-pushed-image/release-pushed-image")
        automations = client.read_automations()

    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 2 * * *", "Europe/Berlin")
    assert schedule.active
    assert nightly.parameters["environment"] == "staging"
    [trigger] = [a for a in automations if a.actions[0].deployment_id == pushed.id]
    assert trigger.trigger.expect == {"registry.image.pushed"}
    assert trigger.actions[0].parameters["digest"] == "{{ event.payload.digest }}"


# --- the UI form -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"environment": "qa"},
        {"environment": "staging", "worker_count": -1},
        {"environment": "staging", "worker_count": 101},
        {"environment": "staging", "image": "Not An Image"},
        {"environment": "staging", "image": "tests/backend@sha256:123"},
        {"environment": "staging", "dry_run": "maybe"},
        {},
    ],
    ids=[
        "unknown-env",
        "negative-workers",
        "too-many-workers",
        "spaces",
        "short-digest",
        "not-bool",
        "no-env",
    ],
)
def test_the_server_refuses_a_form_that_fails_validation(stack, bad):
    before = len(runs_of(stack, "release-from-ui/release"))

    with pytest.raises(PrefectHTTPStatusError) as info:
        start(stack, "release-from-ui/release", **bad)

    assert info.value.response.status_code == 409
    assert "Validation failed" in info.value.response.text
    assert len(runs_of(stack, "release-from-ui/release")) == before


def test_the_form_documents_every_parameter(stack):
    with stack.client() as client:
        schema = client.read_deployment_by_name("release-from-ui/release").parameter_openapi_schema
    properties = schema["properties"]
    assert properties["environment"]["enum"] == ["production", "staging"]  # the blocks
    assert all(p.get("description") for p in properties.values()), properties
    assert "worker count" in properties["worker_count"]["description"]


# --- image-push events -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(stack, bridge, worker, registry, registry2, engine, build_backend, save_environment):
    """Push a new tag to the second registry and wait for the release it triggers."""
    env = save_environment("staging")
    tag = f"main-{uuid.uuid4().hex[:6]}"
    pinned = push_to(engine, registry, registry2, build_backend("trg-v1"), tag)
    digest = pinned.split("@", 1)[1]

    def triggered():
        runs = runs_of(stack, "release-pushed-image/release-pushed-image")
        return [r for r in runs if r.parameters.get("tag") == tag]

    [flow_run] = wait_until(triggered, f"a flow run for the push of {tag}", timeout=30)
    return env, tag, digest, completed(stack, flow_run)


def test_a_pushed_image_is_released_by_its_digest(stack, registry2, pushed, processes):
    env, tag, digest, flow_run = pushed

    assert flow_run.parameters["digest"] == digest
    assert flow_run.parameters["environment"] == "staging"
    assert served_version(env) == "trg-v1"
    assert connect_target(env).read_state().api.image == f"{registry2}/tests/backend@{digest}"
    assert "flow run started in" in logs(stack, flow_run.id)  # event -> run latency
    # its process was forked from the worker's warm engine (flows/warm_engine.py)
    assert f"flow run {flow_run.id} in process" in processes.log("worker-engine")


def test_the_ledger_says_an_event_started_it_and_status_runs_from_the_cli(stack, pushed):
    env, _, digest, flow_run = pushed
    with Ledger(env.database_url_value()) as ledger:
        [entry] = [
            e for e in ledger.history(env.environment) if e.image and e.image.endswith(digest)
        ]
    assert (entry.started_by, entry.outcome) == ("event", "released")

    output = run(
        [
            str(VENV_BIN / "prefect"),
            "deployment",
            "run",
            "status/status",
            "--param",
            'environments=["staging"]',
        ],
        stack.env,
    )

    run_id = uuid.UUID(re.search(r"UUID: ([0-9a-f-]{36})", output).group(1))
    status_run = finished(stack, run_id)
    assert status_run.state.is_completed(), status_run.state.message
    # the run's log lines reach the server shortly after its final state
    wait_until(lambda: "staging: in sync" in logs(stack, run_id), "the status report", timeout=30)


def test_a_redelivered_notification_starts_no_second_run(stack, registry2, pushed):
    env, tag, digest, _ = pushed
    envelope = distribution_envelope(registry2, tag, digest)

    response = httpx.post(
        f"{stack.bridge_url}/registry",
        json=envelope,
        headers={"Authorization": f"Bearer {stack.token}"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["duplicates"] == [
        Push("registry", f"{registry2}/tests/backend", tag, digest).to_dict()
    ]
    time.sleep(3)  # a trigger starts a run within ~0.1 s; the worker polls every 1 s
    runs = runs_of(stack, "release-pushed-image/release-pushed-image")
    assert [r.parameters["digest"] for r in runs if r.parameters.get("tag") == tag] == [digest]


@pytest.mark.parametrize("route", ["/registry", "/artifact-registry", "/ecr"])
def test_unauthenticated_or_malformed_notifications_are_refused(stack, bridge, processes, route):
    url = f"{bridge}{route}"
    bearer = {"Authorization": f"Bearer {stack.token}"}

    assert httpx.post(url, json={"events": []}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{url}?token=wrong", json={}).status_code == 401
    assert httpx.post(url, content=b"{not json", headers=bearer).status_code == 400
    assert httpx.post(url, json=["a", "list"], headers=bearer).status_code == 400
    assert httpx.post(url, json={"unexpected": 1}, headers=bearer).status_code == 400
    assert httpx.post(f"{url}?token={stack.token}", json={"x": 1}).status_code == 400  # authn ok
    assert httpx.get(f"{bridge}/health").json() == {"status": "ok"}
    assert stack.token not in processes.log("bridge")


def test_blob_pull_and_untagged_events_are_ignored(stack, bridge, registry2):
    envelope = distribution_envelope(registry2, "main-x", DIGEST)
    blob = json.loads(json.dumps(envelope["events"][0]))
    blob["target"].update(mediaType="application/octet-stream", tag=None)
    pull = {**envelope["events"][0], "action": "pull"}
    untagged = json.loads(json.dumps(envelope["events"][0]))
    del untagged["target"]["tag"]

    response = httpx.post(
        f"{bridge}/registry",
        json={"events": [blob, pull, untagged]},
        headers={"Authorization": f"Bearer {stack.token}"},
    )

    assert response.status_code == 200
    assert response.json()["released"] == []
    assert len(response.json()["ignored"]) == 3


# --- one release per environment at a time -----------------------------------------------


@contextmanager
def holding_release_slot(stack: Stack, environment: str) -> Iterator[None]:
    """Take the environment's release slot as another release would."""
    with stack.client() as client:
        response = client.increment_concurrency_slots_with_lease(
            names=[f"release-{environment}"], slots=1, mode="concurrency", lease_duration=120
        )
        lease_id = response.json()["lease_id"]
        try:
            yield
        finally:
            client.release_concurrency_slots_with_lease(lease_id)


def test_a_release_waits_for_the_one_in_flight_or_cancels_itself(
    stack, worker, image, save_environment
):
    save_environment("staging")
    with holding_release_slot(stack, "staging"):
        waiting = start(
            stack, "release-from-ui/release", environment="staging", image=image, dry_run=True
        )
        cancelling = start(
            stack,
            "release-from-ui/release",
            environment="staging",
            image=image,
            dry_run=True,
            on_busy="cancel",
        )

        cancelled = finished(stack, cancelling.id)
        assert cancelled.state.is_cancelled(), cancelled.state
        assert "in flight" in cancelled.state.message
        wait_until(
            lambda: "taking the release slot" in logs(stack, waiting.id),
            "the waiting run to ask for the release slot",
            RUN_TIMEOUT,
        )
        time.sleep(3)
        assert subflows(stack, waiting.id) == []  # the release itself has not started

    done = completed(stack, waiting)
    [release] = subflows(stack, done.id)
    assert release.state.is_completed()


def test_two_releases_of_one_environment_never_overlap(stack, worker, image, save_environment):
    save_environment("staging")
    first, second = (
        start(stack, "release-from-ui/release", environment="staging", image=image, dry_run=True)
        for _ in range(2)
    )

    releases = [subflows(stack, completed(stack, run).id)[0] for run in (first, second)]

    earlier, later = sorted(releases, key=lambda r: r.start_time)
    assert earlier.end_time <= later.start_time


# --- approval for production -------------------------------------------------------------


def paused_release(stack: Stack, run_id: uuid.UUID) -> FlowRun:
    def check():
        return next((r for r in subflows(stack, run_id) if r.state.is_paused()), None)

    return wait_until(check, "the release to pause for approval", RUN_TIMEOUT)


def test_production_waits_for_an_approval_and_logs_who_approved(
    stack, worker, image, save_environment
):
    env = save_environment("production", require_approval=True, approval_timeout_seconds=120)
    flow_run = start(stack, "release-from-ui/release", environment="production", image=image)
    release = paused_release(stack, flow_run.id)
    with pytest.raises(httpx.HTTPError):
        served_version(env)  # nothing deployed while waiting

    with stack.client() as client:
        client.resume_flow_run(release.id, run_input={"approved_by": "alice", "comment": "go"})

    completed(stack, flow_run)
    assert served_version(env) == "trg-v1"
    assert "approved by alice (go)" in logs(stack, release.id)
    with Ledger(env.database_url_value()) as ledger:
        assert ledger.history(env.environment)[0].approved_by == "alice (go)"


def test_no_approval_in_time_ends_the_release_without_changes(
    stack, worker, image, engine, save_environment
):
    env = save_environment(
        "production", "-timeout", require_approval=True, approval_timeout_seconds=3
    )
    flow_run = start(stack, "release-from-ui/release", environment="production", image=image)

    done = finished(stack, flow_run.id)

    assert done.state.is_failed()
    [release] = subflows(stack, done.id)
    assert release.state.is_failed()
    # The server may mark the expired pause failed first; the release's own log says why,
    # and its log lines reach the server in batches, possibly after the run's final state.
    wait_until(
        lambda: "within 3 s. Nothing was changed." in logs(stack, release.id),
        "the release's own log to say the approval did not come in time",
        timeout=30,
    )
    assert engine.containers.list(all=True, filters={"label": f"{L_ENV}={env.environment}"}) == []


# --- the notification shapes of the three registries (pure parsing) ---------------------


def test_artifact_registry_pubsub_push_is_parsed():
    name = "europe-docker.pkg.dev/proj/repo/backend"
    data = {"action": "INSERT", "digest": f"{name}@{DIGEST}", "tag": f"{name}:v2"}
    body = {
        "message": {"data": base64.b64encode(json.dumps(data).encode()).decode(), "messageId": "1"},
        "subscription": "projects/proj/subscriptions/release",
    }

    assert from_artifact_registry(body) == ([Push("artifact-registry", name, "v2", DIGEST)], [])
    data["action"] = "DELETE"
    body["message"]["data"] = base64.b64encode(json.dumps(data).encode()).decode()
    assert from_artifact_registry(body) == ([], ["DELETE event"])
    with pytest.raises(MalformedNotification):
        from_artifact_registry({"message": {"data": "%%% not base64"}})


def test_ecr_eventbridge_image_action_is_parsed():
    body = {
        "source": "aws.ecr",
        "detail-type": "ECR Image Action",
        "account": "123456789012",
        "region": "eu-west-1",
        "detail": {
            "action-type": "PUSH",
            "result": "SUCCESS",
            "repository-name": "rhesis/backend",
            "image-digest": DIGEST,
            "image-tag": "v2",
        },
    }
    repository = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rhesis/backend"

    assert from_ecr(body) == ([Push("ecr", repository, "v2", DIGEST)], [])
    body["detail"]["result"] = "FAILURE"
    assert from_ecr(body) == ([], ["PUSH FAILURE image action"])
    body["detail"]["image-digest"] = "sha256:short"
    body["detail"]["result"] = "SUCCESS"
    with pytest.raises(MalformedNotification):
        from_ecr(body)


def test_distribution_push_of_a_tagged_manifest_is_parsed():
    envelope = distribution_envelope("registry.internal:5000", "v2", DIGEST)

    assert from_distribution(envelope) == (
        [Push("registry", "registry.internal:5000/tests/backend", "v2", DIGEST)],
        [],
    )
