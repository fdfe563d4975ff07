"""ECS target against moto's server with a fake agent running real containers: the adapter
on its own, then the release flow and its rollback on an ECS environment.

Every service task and one-off task is a real container of the backend image on the local
Docker engine; the adapter only sees a different endpoint.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions
import httpx
import pytest
from prefect.blocks.system import Secret
from prefect_aws import AwsClientParameters, AwsCredentials
from prefect_aws.secrets_manager import AwsSecret

from blocks.application import Api, ApplicationSpec, Database, Worker
from blocks.ecs import EcsSettings, confirm_pushed_image, connect, registry_credentials
from blocks.environment import ReleaseEnvironment, connect_target
from flows.errors import ReleaseFailed
from flows.lock import in_flight
from flows.release import release
from ledger.store import Ledger
from targets.base import TargetState
from targets.ecs import DEFAULT_VERSION_LABEL, EcsTarget
from targets.errors import AuthenticationError, ConfigurationError, StepFailed, TransientError
from targets.registry import login, push_image, registry_auth
from tasks.check_migrations import RehearsalNotIsolated, check_migrations
from tests import services
from tests.backend import monorepo_context
from tests.conftest import backend_context
from tests.fakes.ecs import REGION, FakeEcs
from tests.releases import (
    logged,
    refused,
    release_from,
    schema,
    task_run_counts,
    wait_until,
)
from tests.test_appspec import RUNTIME_SECRETS, leaked, monorepo_spec, readable_everywhere

pytestmark = [pytest.mark.ecs, pytest.mark.docker, pytest.mark.xdist_group("ecs")]

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

    def redefine(self, service: str, change: Callable[[dict], None], count: int) -> None:
        """Point `service` at a new revision of its task definition whose container
        `change` edited, as a user does by hand."""
        ecs, cluster = self.fake.client("ecs"), self.settings.cluster
        current = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
        definition = self.task_definition(current["taskDefinition"])
        [container] = definition["containerDefinitions"]
        change(container)
        fields = ("family", "networkMode", "requiresCompatibilities", "executionRoleArn", "cpu")
        revision = ecs.register_task_definition(
            containerDefinitions=[container], memory="512", **{k: definition[k] for k in fields}
        )["taskDefinition"]["taskDefinitionArn"]
        ecs.update_service(
            cluster=cluster, service=service, taskDefinition=revision, desiredCount=count
        )


@pytest.fixture
def stack(request, fake_ecs, pg, database, build_backend):
    """The services' deploymentConfiguration gets the fields of an indirect parameter."""
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
            deploymentConfiguration={
                "minimumHealthyPercent": 0,
                "maximumPercent": 100,
                **getattr(request, "param", {}),
            },
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
    wait_until(lambda: not _live_runs(fake_ecs, name), f"{name}'s tasks to stop", 30)


def _live_runs(fake: FakeEcs, cluster: str) -> list:
    return [
        r for r in list(fake.agent.runs.values()) if r.task.cluster_name == cluster and not r.done
    ]


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
    assert schema(pg, stack.database) == "0003"

    target.deploy_api(v1, "ecs-v1")
    target.scale_workers(v1, "ecs-v1", 1)
    assert stack.health() == {"status": "ok", "version": "ecs-v1", "database": True}
    wait_until(lambda: target.workers_alive(v1, 1).ok, "a ready worker", 30)
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
@pytest.mark.migrations
def test_failed_oneoff_task_surfaces_exit_code_and_output(stack, pg, build_backend):
    bad = build_backend("ecs-badmig", fail_migration="0002")
    target = stack.target()

    result = target.run_oneoff(bad, UPGRADE, {}, timeout=120)

    assert result.exit_code != 0
    assert "injected failure in migration 0002" in result.output
    assert "Essential container in task exited" in result.output
    assert schema(pg, stack.database) == "0001"  # 0002 rolled back on its own
    downgrade = target.run_oneoff(bad, ["alembic", "downgrade", "base"], {}, timeout=120)
    assert downgrade.exit_code == 0, downgrade.output
    assert schema(pg, stack.database) is None


@pytest.mark.migrations
def test_oneoff_database_override_replaces_the_task_definition_secret(
    stack, pg, database, build_backend
):
    """A rehearsal points DATABASE_URL at a scratch database: the one-off revision must not
    also carry the real database's secret of the same name."""
    scratch = pg.create_database()
    try:
        target = stack.target()
        result = target.run_oneoff(
            build_backend("ecs-v1"), UPGRADE, {"DATABASE_URL": pg.url(scratch)}, timeout=120
        )
        assert result.exit_code == 0, result.output
        assert schema(pg, scratch) == "0003"
        assert schema(pg, stack.database) is None  # the real one is untouched
        oneoff = stack.task_definition(stack.revisions()[-1])["containerDefinitions"][0]
        assert "DATABASE_URL" not in {s["name"] for s in oneoff.get("secrets", [])}
    finally:
        pg.drop_database(scratch)


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


def test_list_tasks_takes_started_by_alone_as_ecs_does(stack, build_backend):
    """ECS refuses ListTasks with `startedBy` and any other filter: the rollout watch and the
    worker check list tasks in ways ECS accepts."""
    ecs = stack.fake.client("ecs")
    with pytest.raises(botocore.exceptions.ClientError, match="cannot specify startedBy"):
        ecs.list_tasks(
            cluster=stack.settings.cluster, startedBy="ecs-svc/1", desiredStatus="STOPPED"
        )
    v1 = build_backend("ecs-v1")
    target = stack.target()

    target.scale_workers(v1, "ecs-v1", 1)

    wait_until(lambda: target.workers_alive(v1, 1).ok, "a ready worker", 30)
    assert target.read_state().workers.replicas == 1


@pytest.mark.faults
@pytest.mark.parametrize(
    "stack", [{"deploymentCircuitBreaker": {"enable": True, "rollback": True}}], indirect=True
)
def test_a_circuit_breaker_rollback_fails_the_rollout_at_once(stack, build_backend):
    """With the deployment circuit breaker on (and its rollback) since the service was
    created, ECS fails the release's deployment itself and starts a new PRIMARY deployment
    of the previous task definition: the rollout fails then, naming the breaker, rather
    than waiting for that deployment's tasks until the deadline."""
    ecs = stack.fake.client("ecs")
    cluster = stack.settings.cluster

    def api_deployments() -> list[dict]:
        return ecs.describe_services(cluster=cluster, services=["api"])["services"][0][
            "deployments"
        ]

    wait_until(
        lambda: api_deployments()[0]["rolloutState"] == "COMPLETED", "a completed rollout", 60
    )
    target = stack.target(failed_tasks_threshold=None)  # ECS's breaker judges the tasks
    before = target.read_state()
    unhealthy = build_backend("ecs-unhealthy", fail_health="1")

    with pytest.raises(StepFailed, match="circuit breaker") as info:
        target.deploy_api(unhealthy, "ecs-unhealthy")

    assert "Task failed container health checks" in str(info.value)
    assert "not done after" not in str(info.value)
    assert target.read_state().api == before.api  # ECS put the previous revision back
    failed = [d for d in api_deployments() if d["rolloutState"] == "FAILED"]
    assert [d["taskDefinition"] for d in failed] in ([], [stack.revisions()[-1]])
    wait_until(lambda: _served_version(stack) == "ecs-v1", "ecs-v1 served", 60)


def _served_version(stack: Stack) -> str | None:
    try:
        return stack.health()["version"]
    except (AssertionError, httpx.HTTPError):
        return None


def test_ecr_token_logs_in_to_the_registry_and_describe_images_confirms_the_push(
    fake_ecs, engine, registry, build_backend
):
    repository = build_backend("ecs-v1").split("@")[0]
    fake_ecs.client("ecr").create_repository(repositoryName=repository.split("/", 1)[1])
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
    pinned, _ = push_image(engine, f"{repository}:ecs-v1", auth, lambda _: None)

    confirm_pushed_image(settings, pinned)
    never_pushed = pinned.split("@")[0] + "@sha256:" + "0" * 64
    with pytest.raises(StepFailed, match="does not list"):
        confirm_pushed_image(settings, never_pushed)
    with pytest.raises(ConfigurationError, match="does not exist"):
        confirm_pushed_image(settings, pinned.replace("tests/backend", "tests/nothing"))


# -- the release flow against the ECS stack ---------------------------------------------------
@pytest.fixture
def ecs_environment(stack, make_env) -> Callable[..., ReleaseEnvironment]:
    """Save a ReleaseEnvironment on the stack (`aws_credentials` replaces the stack's, other
    keywords are environment fields); no registry credentials block, so the push logs in with
    an ECR authorization token. Its ECR repository is created, as a user creates one before
    the first push."""

    def save(aws_credentials=None, **overrides) -> ReleaseEnvironment:
        settings = stack.settings
        if aws_credentials is not None:
            settings = settings.model_copy(update={"aws_credentials": aws_credentials})
        env = make_env(
            stack.database, target="ecs", ecs=settings, registry_credentials=None, **overrides
        )
        repository = env.image_repository.split("/", 1)[1]
        stack.fake.client("ecr").create_repository(repositoryName=repository)
        env.save(env.environment, overwrite=True)
        return env

    return save


def running(stack: Stack, image: str, version: str, workers: int) -> TargetState:
    """Bring the stack to `image` as an earlier release would have left it (schema at the
    image's head), through the adapter: quicker than a release, and not what is tested."""
    target = stack.target()
    _migrate(target, image)
    target.deploy_api(image, version)
    target.scale_workers(image, version, workers)
    return target.read_state()


@pytest.mark.faults
def test_flow_releases_v1_then_v2_as_new_revisions_through_throttling(
    ecs_environment, stack, pg, tmp_path
):
    # No botocore retries: throttling reaches the release steps, which retry with backoff.
    env = ecs_environment(aws_credentials=stack.fake.credentials(retries={"total_max_attempts": 1}))
    first = release_from(env, tmp_path, "ecs-flow-v1", head="0002")
    assert first["outcome"] == "released"
    v1, revisions = stack.target().read_state(), stack.revisions()
    stack.fake.throttle("UpdateService", times=2)  # the API's and the workers' rollouts

    state = release(
        env.environment,
        source=str(backend_context(tmp_path / "v2", "0003")),
        version="ecs-flow-v2",
        return_state=True,
    )

    assert state.is_completed(), state.message
    second = state.result()
    assert (second["schema_before"], second["schema_after"]) == ("0002", "0003")
    assert schema(pg, stack.database) == "0003"
    assert stack.health() == {"status": "ok", "version": "ecs-flow-v2", "database": True}
    v2 = stack.target().read_state()
    assert (v2.api.image, v2.api.version, v2.api.replicas) == (second["image"], "ecs-flow-v2", 1)
    assert (v2.workers.image, v2.workers.version) == (second["image"], "ecs-flow-v2")
    assert v2.workers.replicas == env.worker_count
    old, new = (stack.task_definition(s.api.revision) for s in (v1, v2))
    assert new["revision"] > old["revision"]
    assert new["containerDefinitions"][0]["dockerLabels"] == {DEFAULT_VERSION_LABEL: "ecs-flow-v2"}
    assert _without_image_and_version(new) == _without_image_and_version(old)
    runs = task_run_counts(state.state_details.flow_run_id)
    assert runs["deploy-api"] + runs["scale-workers"] == 4  # each throttled call was retried
    # One revision for the one-off tasks (SQL rendering, migration), one for the rehearsal
    # (its DATABASE_URL secret removed: the scratch database comes as an override) and one
    # for the API; retries add none.
    assert len(stack.revisions()) == len(revisions) + 3
    assert in_flight(env.environment) is None


@pytest.mark.faults
def test_flow_rolls_an_unhealthy_release_back_to_the_previous_revisions(
    ecs_environment, stack, pg, build_backend, tmp_path
):
    env = ecs_environment()
    before = running(stack, build_backend("ecs-v1", head="0002"), "ecs-v1", env.worker_count)
    created = httpx.post(f"{stack.settings.api_url}/projects", json={"name": "v1 data"}, timeout=5)
    assert created.status_code == 201, created.text

    with pytest.raises(ReleaseFailed) as info:
        release_from(env, tmp_path, "ecs-flow-v2", head="0003", fail_health="1")

    message = str(info.value)
    assert "failed at step 'deploy-api'" in message
    assert "Task failed container health checks" in message
    assert "Rolled back and verified" in message
    assert stack.target().read_state() == before  # both services on their previous revisions
    assert stack.health() == {"status": "ok", "version": "ecs-v1", "database": True}
    assert schema(pg, stack.database) == "0002"
    assert pg.query(stack.database, "select name from projects") == [("v1 data",)]
    assert in_flight(env.environment) is None


@pytest.mark.faults
@pytest.mark.migrations
def test_flow_restores_the_schema_when_the_migration_task_fails(
    ecs_environment, stack, pg, build_backend, tmp_path
):
    env = ecs_environment(migration_rehearsal=False)  # the rehearsal would refuse it first
    before = running(stack, build_backend("ecs-v1", head="0001"), "ecs-v1", env.worker_count)

    with pytest.raises(ReleaseFailed) as info:
        release_from(env, tmp_path, "ecs-flow-v2", head="0003", fail_migration="0003")

    message = str(info.value)
    assert "failed at step 'migrate'" in message
    assert "injected failure in migration 0003" in message  # read back from CloudWatch Logs
    assert "schema back to 0001" in message
    assert schema(pg, stack.database) == "0001"
    assert stack.target().read_state() == before
    assert stack.health()["version"] == "ecs-v1"


@pytest.mark.faults
def test_access_denied_fails_the_release_before_any_change(ecs_environment, stack, pg, tmp_path):
    env = ecs_environment()
    before, revisions = stack.target().read_state(), stack.revisions()

    stack.fake.deny()  # e.g. revoked keys: the first call, the ECR token for the push, fails
    with refused(AuthenticationError, match="GetAuthorizationToken") as revoked:
        release_from(env, tmp_path, "ecs-flow-denied")
    stack.fake.clear_faults()
    stack.fake.deny("DescribeServices")  # a policy without ECS read access: the preflight fails
    with refused(AuthenticationError, match="DescribeServices") as no_ecs:
        release_from(env, tmp_path, "ecs-flow-denied")
    stack.fake.clear_faults()

    for denied in (revoked, no_ecs):
        assert "grant the IAM permission" in str(denied.value)
        assert "fake-secret-key-for-moto" not in str(denied.value)
    assert stack.revisions() == revisions
    assert stack.target().read_state() == before
    assert stack.health()["version"] == "ecs-v1"
    assert schema(pg, stack.database) is None
    assert in_flight(env.environment) is None


@pytest.mark.faults
@pytest.mark.migrations
def test_a_task_definition_without_awslogs_refuses_the_release_unchecked(
    ecs_environment, stack, pg, tmp_path
):
    """Without the awslogs driver a one-off's output cannot be read, so the migration check
    cannot see the pending revisions: the release is refused before any change, naming
    the fix."""
    stack.redefine("api", lambda container: container.pop("logConfiguration"), 1)
    env = ecs_environment()
    before = stack.target().read_state()

    with refused(StepFailed, match="cannot read the revisions.*no awslogs logConfiguration"):
        release_from(env, tmp_path, "ecs-no-logs")

    assert stack.target().read_state() == before
    assert schema(pg, stack.database) is None
    assert in_flight(env.environment) is None


@pytest.mark.migrations
def test_the_rehearsal_task_proves_it_talks_to_the_scratch_database(
    stack, ecs_environment, pg, build_backend
):
    """The API's task definition gives the app its database as the secret
    SQLALCHEMY_DATABASE_URL: a rehearsal that overrides only DATABASE_URL would migrate the
    real database; it refuses instead, and runs once that variable is named."""
    image = build_backend("ecs-iso", reads_database="sqlalchemy-url")
    ecs = stack.fake.client("ecs")
    service = ecs.describe_services(cluster=stack.settings.cluster, services=["api"])
    definition = stack.task_definition(service["services"][0]["taskDefinition"])
    container = definition["containerDefinitions"][0]
    container["secrets"] = [{**s, "name": "SQLALCHEMY_DATABASE_URL"} for s in container["secrets"]]
    fields = ("family", "networkMode", "requiresCompatibilities", "executionRoleArn", "cpu")
    revision = ecs.register_task_definition(
        containerDefinitions=[container], memory="512", **{k: definition[k] for k in fields}
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(
        cluster=stack.settings.cluster, service="api", taskDefinition=revision, desiredCount=0
    )

    with pytest.raises(RehearsalNotIsolated, match="database.url_variables"):
        old_way = ecs_environment()
        check_migrations(old_way, connect_target(old_way), image, current=None)
    assert schema(pg, stack.database) is None

    database = Database(url_variables=["SQLALCHEMY_DATABASE_URL"])
    named = ecs_environment(application=ApplicationSpec(database=database))
    check = check_migrations(named, connect_target(named), image, current=None)

    assert check.pending == ["0001", "0002", "0003"] and check.rehearsal_seconds > 0
    assert schema(pg, stack.database) is None  # rehearsed on the scratch database only


# -- the application spec on ECS ---------------------------------------------------------------
def _containers(stack: Stack, revision: str) -> list:
    """The live containers the agent runs for tasks of `revision`."""
    return [
        r.container
        for r in list(stack.fake.agent.runs.values())
        if r.task.task_definition_arn == revision and not r.done and r.container is not None
    ]


def _env_of(container) -> dict[str, str]:
    container.reload()
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


@pytest.mark.appspec
def test_plain_variables_env_file_and_commands_reach_the_services_containers(
    stack, ecs_environment, build_backend, tmp_path
):
    v1 = build_backend("ecs-v1")
    env_file = tmp_path / "backend.env"
    env_file.write_text("GREETING=from-file\nAPP_VERSION=from-file\n")
    port = stack.settings.api_url.rsplit(":", 1)[1]
    api_command = ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", port]
    worker_command = ["celery", "-A", "app.worker", "worker", "--loglevel=warning"]
    env = ecs_environment(
        env={"APP_VERSION": "from-env"},  # the app answers /health with it
        env_file=str(env_file),
        application=ApplicationSpec(
            api=Api(command=api_command), worker=Worker(command=worker_command)
        ),
    )
    target = connect_target(env)
    target.check()

    target.deploy_api(v1, "ecs-v1")
    target.scale_workers(v1, "ecs-v1", 1)

    assert stack.health()["version"] == "from-env"  # `env` wins over the env file
    state = target.read_state()
    wait_until(lambda: target.workers_alive(v1, 1).ok, "a ready worker", 30)
    for revision, command in (
        (state.api.revision, api_command),
        (state.workers.revision, worker_command),
    ):
        definition = stack.task_definition(revision)["containerDefinitions"][0]
        environment = {e["name"]: e["value"] for e in definition["environment"]}
        assert environment["GREETING"] == "from-file" and environment["APP_VERSION"] == "from-env"
        assert environment["PORT"] == port  # the task definition's own variables stay
        assert definition["command"] == command
        assert [s["name"] for s in definition["secrets"]] == ["DATABASE_URL"]  # still a secret
        [container] = _containers(stack, revision)
        assert container.attrs["Config"]["Cmd"] == command
        running = _env_of(container)
        assert (running["GREETING"], running["APP_VERSION"]) == ("from-file", "from-env")


@pytest.mark.appspec
def test_a_plain_variable_the_task_definition_holds_as_a_secret_is_refused(
    stack, ecs_environment, build_backend
):
    env = ecs_environment(
        env={"DATABASE_URL": "postgresql://example.invalid/db"},
        application=ApplicationSpec(database=Database(url_variables=["SQLALCHEMY_DATABASE_URL"])),
    )
    before, revisions = stack.target().read_state(), stack.revisions()

    with pytest.raises(ConfigurationError, match="DATABASE_URL: a secret of service 'api'"):
        connect_target(env).check()

    assert stack.revisions() == revisions and stack.target().read_state() == before


@pytest.mark.appspec
def test_a_plain_secret_block_on_ecs_is_refused_before_any_change(make_env, database):
    """No fake needed: the refusal comes before any AWS call (the endpoint is a closed
    loopback port) and before the secret blocks, which do not even exist, are read."""
    settings = EcsSettings(
        aws_credentials=AwsCredentials(
            aws_access_key_id="AKIAUNUSED",
            aws_secret_access_key="unused",
            region_name=REGION,
            aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9"),
        ),
        cluster="c",
        api_service="api",
        worker_service="worker",
        container_name=CONTAINER,
        api_url="http://127.0.0.1:9",
    )
    secrets = {"JWT_SECRET_KEY": "secret/no-block-1", "AUTH0_SECRET_KEY": "secret/no-block-2"}
    env = make_env(database, target="ecs", ecs=settings, registry_credentials=None, secrets=secrets)
    env.save(env.environment, overwrite=True)

    with refused(
        ConfigurationError, match="AUTH0_SECRET_KEY, JWT_SECRET_KEY: a plain Secret block"
    ) as info:
        release(env.environment, version="never")

    assert "'aws-secret/<block name>'" in str(info.value)  # the fix: an AwsSecret block
    assert in_flight(env.environment) is None
    with Ledger(env.database_url_value()) as ledger:
        assert ledger.history(env.environment) == []


def _aws_secret(stack: Stack, secret_name: str, value: str | None) -> str:
    """A Secrets Manager secret (no value: None) and an AwsSecret block naming it, as a user
    sets them up; returns the block's reference."""
    client = stack.fake.client("secretsmanager")
    if value is None:
        client.create_secret(Name=secret_name)
    else:
        client.create_secret(Name=secret_name, SecretString=value)
    block = f"{stack.settings.cluster}-{secret_name.rsplit('/', 1)[-1]}"
    AwsSecret(aws_credentials=stack.fake.credentials(), secret_name=secret_name).save(
        block, overwrite=True
    )
    return f"aws-secret/{block}"


@pytest.mark.appspec
def test_secret_variables_reach_the_containers_as_secrets_manager_references(
    ecs_environment, stack, tmp_path
):
    """Secrets Manager references are pinned to the version current at the release: a
    rotation afterwards reaches the next release, and its rollback runs the version that
    ran."""
    value = f"jwt-{uuid.uuid4().hex}"
    name = f"{stack.settings.cluster}/jwt"
    reference = _aws_secret(stack, name, value)
    described = stack.fake.client("secretsmanager").describe_secret(SecretId=name)
    [version] = described["VersionIdsToStages"]
    pinned = f"{described['ARN']}:::{version}"
    greeting = f"greeting-{uuid.uuid4().hex}"
    parameter = f"/{stack.settings.cluster}/greeting"
    stack.fake.client("ssm").put_parameter(Name=parameter, Value=greeting, Type="SecureString")
    from_ssm = f"arn:aws:ssm:{REGION}:123456789012:parameter{parameter}"
    env = ecs_environment(secrets={"JWT_SECRET_KEY": reference, "GREETING": from_ssm})
    first = stack.revisions()[0]

    result = release_from(env, tmp_path, "ecs-secret-v1")

    assert result["outcome"] == "released"
    state = stack.target().read_state()
    # The services' revisions and the one-off ones (SQL rendering, rehearsal, migration).
    registered = [r for r in stack.revisions() if r != first] + [state.workers.revision]
    assert len(registered) >= 4
    for revision in registered:
        definition = stack.task_definition(revision)
        container = definition["containerDefinitions"][0]
        assert {"name": "JWT_SECRET_KEY", "valueFrom": pinned} in container["secrets"]
        assert {"name": "GREETING", "valueFrom": from_ssm} in container["secrets"]
        plain = {e["name"] for e in container.get("environment", [])}
        assert not plain & {"JWT_SECRET_KEY", "GREETING"}
        assert value not in repr(definition) and greeting not in repr(definition)
    assert _running_secrets(stack, state) == [(value, greeting)] * 2

    # Rotated after the release: the next release pins the new version; its rollback puts
    # back the revisions that ran, so the version they ran.
    rotated = f"jwt-{uuid.uuid4().hex}"
    secrets_manager = stack.fake.client("secretsmanager")
    new_version = secrets_manager.put_secret_value(SecretId=name, SecretString=rotated)
    with pytest.raises(ReleaseFailed, match="Rolled back and verified"):
        release_from(env, tmp_path, "ecs-secret-broken", fail_health="1")
    candidate = stack.task_definition(stack.revisions()[-1])["containerDefinitions"][0]
    assert {
        "name": "JWT_SECRET_KEY",
        "valueFrom": f"{described['ARN']}:::{new_version['VersionId']}",
    } in candidate["secrets"]

    assert stack.target().read_state() == state
    assert _running_secrets(stack, state) == [(value, greeting)] * 2
    assert not any(logged(v, seconds=1) for v in (value, rotated, greeting))
    with Ledger(env.database_url_value()) as ledger:
        rows = repr(ledger.history(env.environment))
    assert not any(v in rows for v in (value, rotated, greeting))


def _running_secrets(stack: Stack, state: TargetState) -> list[tuple[str, str]]:
    """(JWT_SECRET_KEY, GREETING) as the running API and worker containers hold them."""
    found = []
    for revision in (state.api.revision, state.workers.revision):
        wait_until(
            lambda revision=revision: _containers(stack, revision), f"containers of {revision}", 30
        )
        running_env = _env_of(_containers(stack, revision)[0])
        found.append((running_env["JWT_SECRET_KEY"], running_env["GREETING"]))
    return found


@pytest.mark.appspec
def test_a_missing_or_valueless_secret_fails_the_release_before_any_change(
    ecs_environment, stack, tmp_path
):
    before, revisions = stack.target().read_state(), stack.revisions()
    block = f"{stack.settings.cluster}-missing"
    AwsSecret(aws_credentials=stack.fake.credentials(), secret_name="no-such-secret").save(
        block, overwrite=True
    )
    missing = f"aws-secret/{block}"
    valueless = _aws_secret(stack, f"{stack.settings.cluster}/empty", None)

    no_parameter = f"arn:aws:ssm:{REGION}:123456789012:parameter/{stack.settings.cluster}/nope"
    for reference, why in (
        (missing, "does not exist"),
        (valueless, "has no current value"),
        (no_parameter, "SSM parameter .* does not exist"),
    ):
        env = ecs_environment(secrets={"JWT_SECRET_KEY": reference})
        with refused(ConfigurationError, match=f"secret variable JWT_SECRET_KEY: .*{why}"):
            release_from(env, tmp_path, "ecs-secret-missing")

    assert stack.revisions() == revisions
    assert stack.target().read_state() == before


def test_a_secret_reference_ecs_cannot_read_stops_the_task_before_it_runs(stack, build_backend):
    """The agent reads `valueFrom` as ECS does: a wrong ARN stops the task before its
    container runs; an SSM parameter's ARN works as a Secrets Manager one does."""
    v1 = build_backend("ecs-v1")
    wrong = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:no-such-secret-AbCdEf"
    ssm = stack.fake.client("ssm")
    parameter = f"/{stack.settings.cluster}/greeting"
    ssm.put_parameter(Name=parameter, Value="from-ssm", Type="SecureString")
    from_ssm = f"arn:aws:ssm:{REGION}:123456789012:parameter{parameter}"
    show = ["python", "-c", "import os; print('greeting=' + os.environ['GREETING'])"]

    def target(secrets: dict[str, str]) -> EcsTarget:
        return connect(stack.settings, "ecs-test", {}, secrets=secrets)

    failed = target({"GREETING": wrong}).run_oneoff(v1, show, {}, timeout=60)
    ran = target({"GREETING": from_ssm}).run_oneoff(v1, show, {}, timeout=60)

    assert failed.exit_code == 125  # never ran
    assert "ResourceInitializationError" in failed.output and "no-such-secret" in failed.output
    assert ran.exit_code == 0, ran.output
    assert "greeting=from-ssm" in ran.output


# -- the monorepo example on ECS ------------------------------------------------------------------
@pytest.mark.appspec
@pytest.mark.migrations
def test_monorepo_on_ecs_v1_v2_then_a_broken_v3_rolled_back_with_its_schema(
    stack, ecs_environment, engine, pg, build_backend, tmp_path
):
    """The monorepo backend (a stage per role, secrets it refuses to start without, its
    database as SQLALCHEMY_DATABASE_URL) on ECS, v1, v2, then a broken v3 rolled back with
    its schema: the API service, the worker service and the migration task each run their
    own stage's image, and the secrets reach the containers from Secrets Manager, never as
    plain values."""
    cluster, started = stack.settings.cluster, time.time()
    values = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in RUNTIME_SECRETS}
    secrets = {
        name: _aws_secret(stack, f"{cluster}/{name.lower().replace('_', '-')}", v)
        for name, v in values.items()
    }
    Secret(value=f"token-{uuid.uuid4().hex}").save(f"{cluster}-token", overwrite=True)
    # The services' task definitions as written for this backend: the database secret under
    # the name it reads, the stage's own command for the workers; the API runs (an earlier
    # backend reading that name) and a release keeps its count.
    earlier = build_backend("ecs-iso", reads_database="sqlalchemy-url")

    def as_this_backend_reads_it(container: dict) -> None:
        container["secrets"] = [
            {**s, "name": "SQLALCHEMY_DATABASE_URL"} for s in container["secrets"]
        ]
        container.pop("command", None)
        container["image"] = earlier

    for service, count in (("api", 1), ("worker", 0)):
        stack.redefine(service, as_this_backend_reads_it, count)
    wait_until(lambda: _served_version(stack) == "ecs-iso", "ecs-iso served", 60)
    port = stack.settings.api_url.rsplit(":", 1)[1]
    spec = monorepo_spec(token=f"secret/{cluster}-token")
    # On the agent's host network the API binds a loopback port, not gunicorn.conf's 0.0.0.0:8080.
    spec.api = Api(
        port=int(port),
        port_variable=None,
        command=[
            "gunicorn",
            "-c",
            "/app/gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "rhesis.backend.app.main:app",
        ],
    )
    env = ecs_environment(application=spec, secrets=secrets, worker_count=1)

    def release_at(head: str, version: str, **faults) -> dict:
        source = monorepo_context(tmp_path, head, **faults)
        return release(env.environment, source=str(source), version=version)

    first = release_at("0002", "m1")

    assert (first["outcome"], schema(pg, stack.database)) == ("released", "0002")
    assert stack.health() == {"status": "ok"}
    images = first["images"]
    stages = {role: engine.images.get(images[role]).labels["io.example.stage"] for role in images}
    assert stages == {"api": "backend", "worker": "worker", "migrate": "migrate"}
    state = stack.target().read_state()
    assert (state.api.image, state.workers.image) == (images["api"], images["worker"])
    oneoffs = [stack.task_definition(r) for r in stack.revisions() if r != state.api.revision]
    assert images["migrate"] in {d["containerDefinitions"][0]["image"] for d in oneoffs}
    for revision in (state.api.revision, state.workers.revision):
        wait_until(
            lambda revision=revision: _containers(stack, revision), f"containers of {revision}", 30
        )
        [container] = _containers(stack, revision)
        running_env = _env_of(container)
        assert all(running_env[name] == value for name, value in values.items())

    second = release_at("0003", "m2")

    assert (second["outcome"], schema(pg, stack.database)) == ("released", "0003")
    assert second["images"]["api"] != images["api"]
    released = stack.target().read_state()
    assert released.workers.image == second["images"]["worker"]

    with pytest.raises(ReleaseFailed) as info:
        release_at("0004", "m3-broken", fail_health=True)

    # The task definition's health check fails the rollout itself.
    assert (info.value.outcome, info.value.step) == ("rolled back", "deploy-api"), str(info.value)
    assert "schema back to 0003" in str(info.value)
    assert schema(pg, stack.database) == "0003"
    assert stack.target().read_state() == released
    assert stack.health() == {"status": "ok"}
    registered = stack.revisions() + [released.workers.revision]
    for revision in registered[1:]:
        definition = stack.task_definition(revision)
        plain = {e["name"] for e in definition["containerDefinitions"][0].get("environment", [])}
        assert not plain & set(RUNTIME_SECRETS)
        assert not [name for name, value in values.items() if value in repr(definition)]
    with Ledger(env.database_url_value()) as ledger:
        rows = repr(ledger.history(env.environment))
    assert leaked(values, [rows, str(info.value), *readable_everywhere(since=started)]) == []


@pytest.mark.appspec
def test_an_ssm_parameter_arn_is_refused_on_a_target_that_cannot_read_it(make_env, database):
    arn = f"arn:aws:ssm:{REGION}:123456789012:parameter/app/greeting"
    env = make_env(database, secrets={"GREETING": arn})  # a Docker-host environment

    with pytest.raises(ConfigurationError, match="GREETING: .* only ECS reads"):
        connect_target(env)
