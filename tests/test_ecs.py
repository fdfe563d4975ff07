"""ECS target against moto's server with a fake agent running real containers.

Every service task and one-off task is a real container of the backend image on the local
Docker engine; the adapter only sees a different endpoint.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from blocks.ecs import EcsSettings, confirm_pushed_image, connect, registry_credentials
from targets.database import read_revision
from targets.ecs import EcsTarget
from targets.engine import login, push_image, registry_auth
from targets.errors import AuthenticationError, ConfigurationError, StepFailed, TransientError
from tests import services
from tests.conftest import TEST_REPOSITORY
from tests.fakes.ecs import REGION, FakeEcs

pytestmark = [pytest.mark.ecs, pytest.mark.docker]

CONTAINER = "backend"
UPGRADE = ["alembic", "upgrade", "head"]
WORKER_COMMAND = ["celery", "-A", "app.worker", "worker", "--loglevel=info"]
# Real ECS wants interval >= 5 s; the agent maps whatever it gets, and tests want speed.
HEALTH_CHECK = {
    "command": [
        "CMD-SHELL",
        'python -c "import os, urllib.request; urllib.request.urlopen('
        "'http://127.0.0.1:%s/health' % os.environ['PORT'], timeout=2)\"",
    ],
    "interval": 1,
    "timeout": 2,
    "retries": 2,
    "startPeriod": 3,
}


@pytest.fixture(scope="module")
def fake_ecs(engine, registry):
    auth = registry_auth(registry.username, registry.password)
    fake = FakeEcs(engine, registry.address, auth).start()
    yield fake
    fake.stop()
    assert not fake.agent.errors, fake.agent.errors


@dataclass
class Stack:
    """One cluster with an `api` and a `worker` service, as a user would have set it up."""

    fake: FakeEcs
    settings: EcsSettings
    database: str
    api_family: str

    def target(self, **changes) -> EcsTarget:
        return connect(self.settings.model_copy(update=changes), "ecs-test", {})

    def health(self) -> dict:
        response = httpx.get(f"{self.settings.api_url}/health", timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def task_definition(self, arn: str) -> dict:
        ecs = self.fake.client("ecs")
        return ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]

    def revisions(self) -> list[str]:
        ecs = self.fake.client("ecs")
        return ecs.list_task_definitions(familyPrefix=self.api_family)["taskDefinitionArns"]


@pytest.fixture
def stack(fake_ecs, pg, database, build_backend):
    name = f"t-{uuid.uuid4().hex[:8]}"
    ecs = fake_ecs.client("ecs")
    secret = fake_ecs.client("secretsmanager").create_secret(
        Name=f"{name}/database-url", SecretString=pg.url(database)
    )
    port = services.free_port()
    container = {
        "name": CONTAINER,
        "image": build_backend("ecs-v1"),
        "essential": True,
        "memory": 256,  # container-level memory: moto's EC2 placement needs it
        "environment": [{"name": "PORT", "value": str(port)}],
        "secrets": [{"name": "DATABASE_URL", "valueFrom": secret["ARN"]}],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": f"/ecs/{name}",
                "awslogs-region": REGION,
                "awslogs-stream-prefix": "backend",
            },
        },
    }
    common = {
        "networkMode": "host",
        "requiresCompatibilities": ["EC2"],
        "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
        "taskRoleArn": "arn:aws:iam::123456789012:role/backend",
        "cpu": "256",
        "memory": "512",
    }
    api = ecs.register_task_definition(
        family=f"{name}-api",
        containerDefinitions=[
            {
                **container,
                "portMappings": [{"containerPort": port, "hostPort": port}],
                "healthCheck": HEALTH_CHECK,
            }
        ],
        **common,
    )["taskDefinition"]
    worker = ecs.register_task_definition(
        family=f"{name}-worker",
        containerDefinitions=[{**container, "command": WORKER_COMMAND}],
        **common,
    )["taskDefinition"]
    ecs.create_cluster(clusterName=name)
    for service, definition, count in (("api", api, 1), ("worker", worker, 0)):
        ecs.create_service(
            cluster=name,
            serviceName=service,
            taskDefinition=definition["taskDefinitionArn"],
            desiredCount=count,
            launchType="EC2",
            deploymentConfiguration={"minimumHealthyPercent": 0, "maximumPercent": 100},
        )
    settings = EcsSettings(
        aws_credentials=fake_ecs.credentials(),
        cluster=name,
        api_service="api",
        worker_service="worker",
        container_name=CONTAINER,
        api_url=f"http://127.0.0.1:{port}",
        rollout_deadline_seconds=90,
        rollout_poll_seconds=0.5,
        failed_tasks_threshold=2,
    )
    yield Stack(fake_ecs, settings, database, f"{name}-api")
    fake_ecs.clear_faults()
    for service in ("api", "worker"):
        ecs.delete_service(cluster=name, service=service, force=True)
    wait_until(lambda: not _live_runs(fake_ecs, name), 30)


def _live_runs(fake: FakeEcs, cluster: str) -> list:
    return [
        r for r in list(fake.agent.runs.values()) if r.task.cluster_name == cluster and not r.done
    ]


def wait_until(condition: Callable[[], object], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {seconds} s"
        time.sleep(0.3)


def _migrate(target: EcsTarget, image: str) -> None:
    result = target.run_oneoff(image, UPGRADE, {}, timeout=120)
    assert result.exit_code == 0, result.output


def _without_image_and_version(definition: dict) -> dict:
    container = dict(definition["containerDefinitions"][0])
    container.pop("image")
    container.pop("dockerLabels", None)
    fixed = ("taskDefinitionArn", "revision", "registeredAt", "registeredBy", "status")
    rest = {k: v for k, v in definition.items() if k not in fixed}
    return {**rest, "containerDefinitions": [container]}


def test_release_v1_then_v2_changes_only_the_image(stack, pg, build_backend):
    v1, v2 = build_backend("ecs-v1"), build_backend("ecs-v2")
    target = stack.target()
    target.check()

    migration = target.run_oneoff(v1, UPGRADE, {}, timeout=120)
    assert migration.exit_code == 0, migration.output
    assert "Running upgrade 0002 -> 0003" in migration.output  # read back from CloudWatch Logs
    assert read_revision(pg.url(stack.database)) == "0003"

    target.deploy_api(v1, "ecs-v1")
    target.scale_workers(v1, "ecs-v1", 1)
    assert stack.health() == {"status": "ok", "version": "ecs-v1", "database": True}
    wait_until(lambda: target.workers_alive(v1, 1).ok, 30)
    before = target.read_state()
    assert (before.api.image, before.api.version, before.api.replicas) == (v1, "ecs-v1", 1)
    assert (before.workers.image, before.workers.replicas) == (v1, 1)

    target.deploy_api(v2, "ecs-v2")

    after = target.read_state()
    assert (after.api.image, after.api.version) == (v2, "ecs-v2")
    assert after.api.revision != before.api.revision
    assert stack.health()["version"] == "ecs-v2"
    old, new = (stack.task_definition(s.api.revision) for s in (before, after))
    assert new["containerDefinitions"][0]["image"] == v2
    assert _without_image_and_version(new) == _without_image_and_version(old)
    assert after.workers == before.workers  # the API release left the workers alone


@pytest.mark.faults
def test_broken_image_fails_the_rollout_and_restore_brings_v1_back(stack, build_backend):
    v1, broken = build_backend("ecs-v1"), build_backend("ecs-broken", fail_health="1")
    target = stack.target()
    _migrate(target, v1)
    target.deploy_api(v1, "ecs-v1")
    snapshot = target.read_state()

    with pytest.raises(StepFailed, match="failed container health checks"):
        target.deploy_api(broken, "ecs-broken")
    assert target.read_state().api.image == broken  # the service points at the bad revision

    target.restore_api(snapshot.api)

    assert target.read_state().api == snapshot.api
    assert stack.health() == {"status": "ok", "version": "ecs-v1", "database": True}


@pytest.mark.faults
@pytest.mark.migrations
def test_failed_oneoff_task_surfaces_exit_code_and_output(stack, pg, build_backend):
    bad = build_backend("ecs-badmig", fail_migration="0002")
    target = stack.target()

    result = target.run_oneoff(bad, UPGRADE, {}, timeout=120)

    assert result.exit_code != 0
    assert "injected failure in migration 0002" in result.output
    assert "Essential container in task exited" in result.output
    assert read_revision(pg.url(stack.database)) == "0001"  # 0002 rolled back on its own
    downgrade = target.run_oneoff(bad, ["alembic", "downgrade", "base"], {}, timeout=120)
    assert downgrade.exit_code == 0, downgrade.output
    assert read_revision(pg.url(stack.database)) is None


@pytest.mark.faults
def test_throttled_call_is_retried_and_persistent_throttling_is_transient(stack, build_backend):
    target = stack.target()
    calls = stack.fake.calls("DescribeServices")
    stack.fake.throttle("DescribeServices", times=1)

    state = target.read_state()

    assert state.api.image == build_backend("ecs-v1")
    assert stack.fake.calls("DescribeServices") - calls == 3  # api twice (throttled), worker
    impatient = connect(
        stack.settings.model_copy(
            update={
                "aws_credentials": stack.fake.credentials(
                    retries={"max_attempts": 2, "mode": "standard"}
                )
            }
        ),
        "ecs-test",
        {},
    )
    stack.fake.throttle("DescribeServices", times=5)
    with pytest.raises(TransientError, match="Throttling"):
        impatient.read_state()


@pytest.mark.faults
def test_access_denied_is_an_authentication_error_before_any_change(stack, build_backend):
    v2 = build_backend("ecs-v2")
    target = stack.target()
    before, revisions = target.read_state(), stack.revisions()

    stack.fake.deny()
    with pytest.raises(AuthenticationError, match="AccessDenied") as denied:
        target.check()
    assert "fake-secret-key-for-moto" not in str(denied.value)
    stack.fake.clear_faults()
    stack.fake.deny("RegisterTaskDefinition")
    with pytest.raises(AuthenticationError, match="RegisterTaskDefinition"):
        target.deploy_api(v2, "ecs-v2")
    stack.fake.clear_faults()

    assert stack.revisions() == revisions
    assert target.read_state() == before


def test_missing_service_or_cluster_is_a_configuration_error(stack, build_backend):
    revisions = stack.revisions()
    with pytest.raises(ConfigurationError, match="'no-such-api'.*api_service"):
        stack.target(api_service="no-such-api").check()
    with pytest.raises(ConfigurationError, match="'no-such-cluster'.*cluster"):
        stack.target(cluster="no-such-cluster").check()
    with pytest.raises(ConfigurationError, match="cluster"):
        stack.target(cluster="no-such-cluster").deploy_api(build_backend("ecs-v2"), "ecs-v2")
    with pytest.raises(ConfigurationError, match="'web'"):
        stack.target(container_name="web").check()
    assert stack.revisions() == revisions


def test_ecr_token_logs_in_to_the_registry_and_describe_images_confirms_the_push(
    fake_ecs, engine, registry, build_backend
):
    build_backend("ecs-v1")
    settings = EcsSettings(
        aws_credentials=fake_ecs.credentials(),
        cluster="unused",
        api_service="api",
        worker_service="worker",
        container_name=CONTAINER,
        api_url="http://127.0.0.1:9",
    )
    creds = registry_credentials(settings, registry.address)
    assert (creds.username, creds.registry_url) == ("AWS", registry.address)
    auth = registry_auth(creds.username, creds.password.get_secret_value())
    login(engine, registry.address, auth)  # the registry accepts the decoded ECR token
    pinned, _ = push_image(engine, f"{TEST_REPOSITORY}:ecs-v1", auth, lambda _: None)

    repository = TEST_REPOSITORY.split("/", 1)[1]
    ecr = fake_ecs.client("ecr")
    if not ecr.describe_repositories()["repositories"]:
        ecr.create_repository(repositoryName=repository)
    with pytest.raises(StepFailed, match="does not list"):
        confirm_pushed_image(settings, pinned)
    fake_ecs.register_image(pinned, "ecs-v1")
    confirm_pushed_image(settings, pinned)
    with pytest.raises(ConfigurationError, match="does not exist"):
        confirm_pushed_image(settings, pinned.replace("tests/backend", "tests/nothing"))
