"""Cloud Run target against the fake Cloud Run Admin API v2 (real containers, real google-auth,
real run_v2 REST client, real registry and PostgreSQL)."""

import json
import time
import uuid

import httpx
import pytest
from google.api_core.exceptions import BadRequest
from google.cloud import run_v2
from prefect import task
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import LogSort
from prefect_gcp import GcpCredentials, GcpSecret
from pydantic import ValidationError

from blocks.application import Api, ApplicationSpec, Database
from blocks.cloud_run import CloudRunSettings, connect, registry_credentials
from blocks.environment import ReleaseEnvironment, connect_target
from flows.errors import ReleaseFailed
from flows.lock import in_flight
from flows.release import release as release_flow
from ledger.store import Ledger
from targets.base import Processes
from targets.errors import AuthenticationError, ConfigurationError, StepFailed, TransientError
from targets.registry import login, push_image, registry_auth
from tasks.check_migrations import MigrationRefused, RehearsalNotIsolated, rehearse
from tasks.check_migrations import check_migrations as check_migrations_task
from tasks.deploy import deploy_api as deploy_api_task
from tests import services
from tests.backend import backend_context, monorepo_context
from tests.conftest import build_image
from tests.fakes.cloud_run import FakeCloudRun
from tests.releases import refused, schema
from tests.test_appspec import RUNTIME_SECRETS, leaked, monorepo_spec, readable_everywhere

pytestmark = [pytest.mark.cloudrun, pytest.mark.docker]

PROJECT, REGION = "rhesis-test", "europe-west1"
CLOUDSQL = f"{PROJECT}:{REGION}:backend-db"
PLACEHOLDER = "python:3.11-slim"  # what `gcloud run deploy` left before the first release
MIGRATE = ["alembic", "upgrade", "head"]


@pytest.fixture
def fake(engine, registry):
    token = (services.STATE_DIR / "registry" / "gcp-token").read_text().strip()
    pull_auth = {"username": "oauth2accesstoken", "password": token}
    with FakeCloudRun(engine, access_token=token, pull_auth=pull_auth) as fake:
        yield fake


def make_settings(fake: FakeCloudRun, *, authorized: bool = True, **overrides):
    suffix = uuid.uuid4().hex[:6]
    key = fake.service_account_key(
        f"release-{suffix}@{PROJECT}.iam.gserviceaccount.com", PROJECT, authorized=authorized
    )
    fields = dict(
        gcp_credentials=GcpCredentials(service_account_info=key),
        project=PROJECT,
        region=REGION,
        api_service=f"api-{suffix}",
        worker_service=f"worker-{suffix}",
        migration_job=f"migrate-{suffix}",
        cloudsql_instances=[CLOUDSQL],
        api_endpoint=fake.url,
        logging_endpoint=fake.url,
        operation_timeout_seconds=90,
    )
    fields.update(overrides)
    return CloudRunSettings(**fields)


@pytest.fixture
def settings(fake):
    """Settings whose two services exist, as the seed's `gcloud run deploy` left them."""
    return seeded(fake, make_settings(fake))


def seeded(
    fake: FakeCloudRun, settings: CloudRunSettings, container: dict | None = None, **template
) -> CloudRunSettings:
    """Create the settings' two services, as the seed's `gcloud run deploy` does
    (`container`, `template`: more fields of their container and revision template)."""
    client = run_v2.ServicesClient(
        credentials=settings.gcp_credentials.get_credentials_from_service_account(),
        transport="rest",
        client_options={"api_endpoint": fake.url},
    )
    listener = run_v2.Container(
        image=PLACEHOLDER,
        command=["sh", "-c", 'exec python3 -m http.server "$PORT"'],
        resources=run_v2.ResourceRequirements(cpu_idle=True),
        **(container or {}),
    )
    parent = f"projects/{PROJECT}/locations/{REGION}"
    for name in (settings.api_service, settings.worker_service):
        revision = run_v2.RevisionTemplate(containers=[listener], **template)
        service = run_v2.Service(template=revision)
        client.create_service(parent=parent, service=service, service_id=name).result(60)
    return settings


@pytest.fixture
def target(settings, pg, database):
    return connect(settings, "staging", {"DATABASE_URL": pg.url(database)})


def health(url: str, budget: float = 30.0) -> dict:
    """The last /health answer, waiting until it is a 200 (or the budget is spent)."""
    deadline = time.monotonic() + budget
    while True:
        response = httpx.get(f"{url}/health", timeout=5)
        if response.status_code == 200 or time.monotonic() > deadline:
            return {"code": response.status_code, **response.json()}
        time.sleep(0.5)


def release(target, image: str, version: str, workers: int = 1) -> None:
    """What the release flow does on Cloud Run, step by step."""
    assert target.run_oneoff(image, MIGRATE, {}, timeout=120).exit_code == 0
    target.deploy_api(image, version)
    assert health(target.candidate_url())["version"] == version
    target.promote_api()
    target.scale_workers(image, version, workers)


def test_release_v1_then_v2_moves_traffic_only_after_the_tag_url_answers(
    fake, target, settings, build_backend, pg, database, engine
):
    v1, v2 = build_backend("cr-v1"), build_backend("cr-v2")
    target.check()
    release(target, v1, "cr-v1")
    assert schema(pg, database) == "0003"  # the job really migrated
    before = target.read_state()

    target.deploy_api(v2, "cr-v2")

    candidate = health(target.candidate_url())
    assert (candidate["code"], candidate["version"]) == (200, "cr-v2")
    assert target.candidate_url().endswith("/v-cr-v2")
    served = health(target.service_url())
    assert served["version"] == "cr-v1"  # users still get v1
    assert target.read_state().api == before.api

    target.promote_api()
    target.scale_workers(v2, "cr-v2", 2)

    assert health(target.service_url())["version"] == "cr-v2"
    state = target.read_state()
    assert (state.api.image, state.api.version) == (v2, "cr-v2")
    assert state.api.revision != before.api.revision
    assert (state.workers.image, state.workers.version, state.workers.replicas) == (v2, "cr-v2", 2)
    assert target.workers_alive(v2, 2).ok
    assert fake.routable_instances(settings.worker_service) == {state.workers.revision: 2}
    wait_for_celery(engine, state.workers.revision, 2)

    api = fake.service(settings.api_service)
    assert [t["percent"] for t in api["trafficStatuses"]] == [100]
    container = api["template"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    same_database = env["DATABASE_URL"] == pg.url(database)  # compared, never printed
    assert same_database
    assert {"name": "cloudsql", "mountPath": "/cloudsql"} in container["volumeMounts"]
    assert {"name": "cloudsql", "cloudSqlInstance": {"instances": [CLOUDSQL]}} in api["template"][
        "volumes"
    ]
    worker = fake.service(settings.worker_service)["template"]
    assert worker["scaling"]["minInstanceCount"] == 2
    assert not worker["containers"][0]["resources"].get("cpuIdle")  # CPU always allocated


def wait_for_celery(engine, revision: str, count: int, budget: float = 30.0) -> None:
    deadline = time.monotonic() + budget
    label = f"io.rhesis.fake-cloudrun.revision={revision}"
    while True:
        containers = engine.containers.list(filters={"label": label})
        ready = [c for c in containers if " ready." in c.logs(tail=200).decode(errors="replace")]
        if len(ready) == count:
            return
        assert time.monotonic() < deadline, f"{len(ready)}/{count} Celery workers ready"
        time.sleep(1)


@pytest.mark.faults
def test_broken_candidate_never_gets_traffic_and_rollback_pins_the_old_revision(
    fake, target, settings, build_backend
):
    v1 = build_backend("cr-v1")
    broken = build_backend("cr-broken", fail_health="1")
    release(target, v1, "cr-v1")
    before = target.read_state()

    target.deploy_api(broken, "cr-broken")
    candidate = health(target.candidate_url(), budget=3)
    assert candidate["code"] == 503  # verification fails on the tag URL ...
    assert health(target.service_url())["version"] == "cr-v1"  # ... while users get v1
    created = len(target.revisions.list_revisions(parent=target.api_name).revisions)

    target.restore_api(before.api)

    assert target.read_state().api == before.api
    assert health(target.service_url())["version"] == "cr-v1"
    assert len(target.revisions.list_revisions(parent=target.api_name).revisions) == created
    statuses = fake.service(settings.api_service)["trafficStatuses"]
    assert [(s["revision"], s["percent"]) for s in statuses] == [(before.api.revision, 100)]


@pytest.mark.faults
@pytest.mark.migrations
def test_failed_migration_job_surfaces_the_error_and_the_schema_is_restored(
    target, build_backend, pg, database
):
    broken = build_backend("cr-badmig", fail_migration="0002")

    result = target.run_oneoff(broken, MIGRATE, {}, timeout=120)

    assert result.exit_code == 1
    assert "exit code of 1" in result.output
    # the job's own output, read from Cloud Logging: Alembic's traceback
    assert "RuntimeError: injected failure in migration 0002" in result.output
    assert "Running upgrade 0001 -> 0002" in result.output
    assert schema(pg, database) == "0001"  # stopped at the last good revision
    restored = target.run_oneoff(broken, ["alembic", "downgrade", "base"], {}, timeout=120)
    assert restored.exit_code == 0
    assert schema(pg, database) is None


@pytest.mark.faults
def test_a_503_on_a_read_is_retried_and_on_a_change_is_transient(fake, target, build_backend):
    fake.fail_next(503, method="GET", path_contains="/services/")
    target.read_state()  # retried inside the adapter
    gets = [p for m, p in fake.requests if m == "GET" and p == f"/v2/{target.api_name}"]
    assert len(gets) == 2

    v1 = build_backend("cr-v1")
    fake.fail_next(503, method="PATCH")
    with pytest.raises(TransientError, match="503"):
        target.deploy_api(v1, "cr-v1")
    assert target.read_state().api.image == PLACEHOLDER  # nothing changed
    target.deploy_api(v1, "cr-v1")  # what the task's retry does
    assert health(target.candidate_url())["version"] == "cr-v1"


@pytest.mark.faults
def test_permission_denied_is_an_authentication_error_before_any_change(fake, settings, pg):
    denied = make_settings(
        fake,
        authorized=False,
        api_service=settings.api_service,
        worker_service=settings.worker_service,
    )
    target = connect(denied, "staging", {"DATABASE_URL": "postgresql://u:s3cr3t@h/db"})
    before, changes = fake.service(settings.api_service), fake.mutations()

    with pytest.raises(AuthenticationError, match="refused the credentials") as info:
        target.check()
    with pytest.raises(AuthenticationError):
        target.deploy_api(PLACEHOLDER, "v9")

    assert fake.mutations() == changes
    assert fake.service(settings.api_service)["generation"] == before["generation"]
    assert "PRIVATE KEY" not in str(info.value) and "s3cr3t" not in str(info.value)


def test_artifact_registry_login_uses_an_access_token_of_the_service_account(
    fake, registry, engine
):
    creds = registry_credentials(make_settings(fake), registry.address)
    assert creds.username == "oauth2accesstoken"
    auth = registry_auth(creds.username, creds.password.get_secret_value())
    login(engine, registry.address, auth)  # the real registry accepts it

    refused = registry_credentials(make_settings(fake, authorized=False), registry.address)
    wrong = registry_auth(refused.username, refused.password.get_secret_value())
    with pytest.raises(AuthenticationError):
        login(engine, registry.address, wrong)


def test_bad_input_is_a_clear_error_before_anything_runs(fake, settings):
    unset = ReleaseEnvironment(
        environment="staging",
        image_repository="127.0.0.1:5000/rhesis/backend",
        database_url=Secret(value="postgresql://u:p@127.0.0.1:5432/db"),
        target="cloudrun",
    )
    with pytest.raises(ValidationError, match="'<area>-<direction><number>', e.g. 'europe-west1'"):
        make_settings(fake, region="europe_west")
    with pytest.raises(ConfigurationError, match="no Cloud Run settings"):
        connect_target(unset)
    missing = make_settings(fake, api_service=settings.api_service, worker_service="no-such-worker")
    with pytest.raises(ConfigurationError, match="'no-such-worker' does not exist"):
        connect(missing, "staging", {}).check()
    seed = ("POST", f"/v2/projects/{PROJECT}/locations/{REGION}/services")
    assert fake.mutations() == [seed, seed]  # only the seed created anything


def logged(text: str) -> bool:
    """Whether a recent log line of the session holds `text` (lines reach the API in
    batches, so this waits up to 15 s for them)."""
    deadline = time.monotonic() + 15
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)
        if any(text in log.message for log in logs) or time.monotonic() > deadline:
            return any(text in log.message for log in logs)
        time.sleep(0.5)


@pytest.mark.faults
def test_release_flow_releases_then_rolls_back_a_broken_candidate(
    fake, settings, make_env, database, build_backend, pg
):
    env = make_env(database, target="cloudrun", cloud_run=settings, registry_credentials=None)
    env.save(env.environment, overwrite=True)
    v1, broken = build_backend("cr-v1"), build_backend("cr-broken", fail_health="1")

    first = release_flow(env.environment, image=v1)

    assert first["outcome"] == "released"
    assert logged("pending revisions: 0001, 0002, 0003")  # read from the job's log
    assert logged("rehearsal passed in")
    target = connect_target(env)
    assert health(target.service_url())["version"] == "cr-v1"
    before = target.read_state()

    with pytest.raises(ReleaseFailed, match="verify-api.*Rolled back and verified"):
        release_flow(env.environment, image=broken)

    assert target.read_state() == before  # same revisions, images and worker count
    assert health(target.service_url())["version"] == "cr-v1"
    assert schema(pg, database) == "0003"


@pytest.mark.migrations
def test_the_rehearsal_job_proves_it_talks_to_the_scratch_database(
    fake, settings, make_env, database, pg, build_backend
):
    """A rehearsal job that cannot see its scratch database refuses before changing
    anything (told by its exit code, whatever Cloud Logging holds)."""
    image = build_backend("cr-iso", reads_database="sqlalchemy-url")
    cloud_run = dict(target="cloudrun", cloud_run=settings, registry_credentials=None)
    old_way = make_env(database, env={"SQLALCHEMY_DATABASE_URL": pg.url(database)}, **cloud_run)
    wired = ApplicationSpec(database=Database(url_variables=["SQLALCHEMY_DATABASE_URL"]))
    named = make_env(database, application=wired, **cloud_run)
    rehearsal = task(rehearse)
    scratch_round_trip = dict(current=None, head="0003", round_trip=True)

    with pytest.raises(RehearsalNotIsolated, match="It most likely reads SQLALCHEMY_DATABASE_URL"):
        rehearsal(old_way, connect_target(old_way), image, **scratch_round_trip)
    assert schema(pg, database) is None

    assert rehearsal(named, connect_target(named), image, **scratch_round_trip) > 0
    assert schema(pg, database) is None  # rehearsed on the scratch database only


@pytest.mark.appspec
def test_plain_secret_variables_are_refused_before_any_change_unless_plain_values_are_allowed(
    fake, make_env, database
):
    """Cloud Run would store a secret variable of a plain Secret block as a plain value of
    the service: refused, naming the variables and the fix, unless the settings accept
    plain values."""
    value = f"jwt-{uuid.uuid4().hex}"
    name = f"cr-jwt-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name, overwrite=True)
    env = make_env(
        database,
        target="cloudrun",
        cloud_run=make_settings(fake),
        registry_credentials=None,
        secrets={"JWT_SECRET_KEY": f"secret/{name}"},
    )
    env.save(env.environment, overwrite=True)

    with refused(
        ConfigurationError, match="Cloud Run secret variables JWT_SECRET_KEY .* not GcpSecret"
    ) as info:
        release_flow(env.environment, version="never")
    assert "allow_plain_secret_values" in str(info.value)
    assert in_flight(env.environment) is None
    with Ledger(env.database_url_value()) as ledger:
        assert ledger.history(env.environment) == []
    env.cloud_run.allow_plain_secret_values = True
    accepted = connect_target(env).env.get("JWT_SECRET_KEY") == value
    assert accepted  # compared here: a failing assertion must not print the secret


LISTENER = ("sh", "-c", 'exec python3 -m http.server "$PORT"')  # answers 200 on /


def test_a_long_service_name_gets_a_shorter_candidate_tag_cloud_run_accepts(fake, pg, database):
    """Cloud Run refuses a tag whose length plus the service name's exceeds 46: with a
    40-character API service, the candidate tag keeps what fits of the version."""
    suffix = uuid.uuid4().hex[:6]
    long_name = f"api-{suffix}-" + "x" * (40 - len(suffix) - 5)
    settings = seeded(fake, make_settings(fake, api_service=long_name))
    target = connect(settings, "staging", {}, processes=Processes(api_command=LISTENER))

    target.deploy_api(PLACEHOLDER, "release-2026-12-04-build-1234567")

    [tagged] = [s for s in fake.service(long_name)["trafficStatuses"] if s.get("tag")]
    assert len(tagged["tag"]) + len(long_name) <= 46
    assert tagged["tag"].startswith("v-re")
    assert httpx.get(target.candidate_url(), timeout=5).status_code == 200


def test_an_api_service_name_no_tag_fits_beside_is_refused_before_any_change(fake, settings):
    too_long = "api-" + "x" * 40  # 44 characters: not even a 3-character tag fits
    with pytest.raises(ValidationError, match="at most 43 characters"):
        make_settings(fake, api_service=too_long)
    unchecked = CloudRunSettings.model_construct(**{**dict(settings), "api_service": too_long})
    target = connect(unchecked, "staging", {})
    changes = fake.mutations()

    with pytest.raises(ConfigurationError, match="exceeds 46.*at most 43 characters"):
        target.check()
    with pytest.raises(ConfigurationError, match="exceeds 46"):
        target.deploy_api(PLACEHOLDER, "v1")
    assert fake.mutations() == changes


def test_the_fake_refuses_tags_and_revision_names_as_cloud_run_does(fake, settings):
    """What real Cloud Run refuses, the fake refuses (the adapter must never send it)."""
    client = run_v2.ServicesClient(
        credentials=settings.gcp_credentials.get_credentials_from_service_account(),
        transport="rest",
        client_options={"api_endpoint": fake.url},
    )
    name = f"projects/{PROJECT}/locations/{REGION}/services/{settings.api_service}"
    service = client.get_service(name=name)
    serving = service.traffic_statuses[0].revision
    for tag in ("v1", "V-1", "v-" + "x" * 40):
        service.traffic = [
            run_v2.TrafficTarget(type_=2, revision=serving, percent=100, tag=tag),
        ]
        with pytest.raises(BadRequest, match="traffic tag"):
            client.update_service(service=service)
    service.traffic = []
    for revision in (
        "other-1",
        f"{settings.api_service}-Bad",
        f"{settings.api_service}-" + "x" * 60,
    ):
        service.template.revision = revision
        with pytest.raises(BadRequest, match="[Rr]evision"):
            client.update_service(service=service)


def test_a_revision_that_cannot_start_fails_the_deploy_once_without_a_retry(fake, settings):
    """Cloud Run answers 13 for a revision whose container never listens: a failed step
    (its message says why), not a transient fault: the task deploys it once."""
    target = connect(settings, "staging", {})  # the placeholder's CMD exits at once
    before = target.read_state()

    with pytest.raises(StepFailed, match="exited with code 0 before listening"):
        deploy_api_task(target, PLACEHOLDER, "cr-nostart")

    patches = [p for m, p in fake.mutations() if m == "PATCH"]
    assert len(patches) == 1  # deployed once, not again by the task's retries
    assert target.read_state().api == before.api
    revisions = target.revisions.list_revisions(parent=target.api_name).revisions
    assert len(revisions) == 2  # the seed's and the broken one


def test_the_migration_job_runs_as_the_api_service_runs(fake, pg, database):
    """Service account, VPC access, resource limits and Secret Manager references of the
    API service reach the job: on a real project it then runs as the API's identity and
    reaches Cloud SQL through the same connector, not as the default compute account."""
    account = f"api-runtime@{PROJECT}.iam.gserviceaccount.com"
    connector = f"projects/{PROJECT}/locations/{REGION}/connectors/backend"
    reference = run_v2.EnvVar(
        name="JWT_SECRET_KEY",
        value_source=run_v2.EnvVarSource(
            secret_key_ref=run_v2.SecretKeySelector(secret="jwt-secret-key", version="3")
        ),
    )
    for version in ("1", "2", "3"):
        fake.add_secret_version(PROJECT, "jwt-secret-key", f"jwt-{version}-{uuid.uuid4().hex}")
    limits = {"cpu": "2", "memory": "1Gi"}
    container = dict(env=[reference])
    settings = make_settings(fake)
    seeded(
        fake,
        settings,
        container,
        service_account=account,
        vpc_access=run_v2.VpcAccess(connector=connector, egress=1),
    )
    api = fake.service(settings.api_service)  # limits set by hand after the seed
    client = run_v2.ServicesClient(
        credentials=settings.gcp_credentials.get_credentials_from_service_account(),
        transport="rest",
        client_options={"api_endpoint": fake.url},
    )
    service = client.get_service(name=api["name"])
    service.template.containers[0].resources.limits = limits
    client.update_service(service=service).result(60)
    target = connect(settings, "staging", {"DATABASE_URL": pg.url(database)})

    reads_secret = (
        "import os, sys; ok = os.environ['JWT_SECRET_KEY'][:6] == 'jwt-3-'; "
        "print('secret version 3:', ok); sys.exit(not ok)"
    )
    result = target.run_oneoff(PLACEHOLDER, ["python3", "-c", reads_secret], {}, timeout=60)

    assert result.exit_code == 0  # the job's container got version 3 of the secret
    assert "secret version 3: True" in result.output  # its output, from Cloud Logging
    task = fake.job(settings.migration_job)["template"]["template"]
    assert task["serviceAccount"] == account
    assert task["vpcAccess"] == {"connector": connector, "egress": 1}
    [job_container] = task["containers"]
    assert job_container["resources"]["limits"] == limits
    secret_ref = {"secretKeyRef": {"secret": "jwt-secret-key", "version": "3"}}
    assert {"name": "JWT_SECRET_KEY", "valueSource": secret_ref} in job_container["env"]
    names = [e["name"] for e in job_container["env"]]
    assert "DATABASE_URL" in names and "APP_ENVIRONMENT" in names


def test_a_service_that_requires_authentication_is_verified_with_an_identity_token(
    fake, settings, make_env, database, build_backend
):
    """Without `--allow-unauthenticated` a Cloud Run service answers 403 to anonymous
    requests: verification sends an identity token of the environment's service account
    (audience: the service URL), so the release goes through."""
    fake.require_authentication(settings.api_service)
    env = make_env(database, target="cloudrun", cloud_run=settings, registry_credentials=None)
    env.save(env.environment, overwrite=True)
    v1 = build_backend("cr-v1")

    outcome = release_flow(env.environment, image=v1)

    assert outcome["outcome"] == "released"
    probes = list(fake.invoker_tokens)
    assert probes and all(probes)  # every verification request bore a valid identity token
    target = connect_target(env)
    url = f"{target.service_url()}/health"
    assert httpx.get(url, timeout=5).status_code == 403  # anonymous: refused
    token = target.request_headers(target.service_url())["Authorization"]
    assert httpx.get(url, headers={"Authorization": token}, timeout=5).json()["version"] == "cr-v1"
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert httpx.get(url, headers={"Authorization": forged}, timeout=5).status_code == 401


@pytest.mark.appspec
@pytest.mark.migrations
def test_monorepo_on_cloud_run_v1_v2_then_a_broken_v3_rolled_back_with_its_schema(
    fake, settings, make_env, database, engine, pg, tmp_path
):
    """The monorepo backend (a stage per role, secrets it refuses to start without, its
    database as SQLALCHEMY_DATABASE_URL, no version on /health) on Cloud Run: each role
    runs its own stage's image, the secrets are Secret Manager references resolved into
    the running containers, and a broken v3 is rolled back with its schema."""
    settings.secret_manager_endpoint = fake.url
    started = time.time()
    values = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in RUNTIME_SECRETS}
    secrets = {name: gcp_secret(fake, settings, value)[1] for name, value in values.items()}
    token = f"cr-token-{settings.api_service}"
    Secret(value=f"token-{uuid.uuid4().hex}").save(token, overwrite=True)
    spec = monorepo_spec(token=f"secret/{token}")
    # Cloud Run hands the port over in $PORT, and the fake runs instances on the host network.
    spec.api = Api(
        port=8080,
        port_variable=None,
        command=[
            "sh",
            "-c",
            "exec gunicorn -c /app/gunicorn.conf.py --bind 127.0.0.1:$PORT "
            "rhesis.backend.app.main:app",
        ],
    )
    env = make_env(
        database,
        target="cloudrun",
        cloud_run=settings,
        registry_credentials=None,
        application=spec,
        secrets=secrets,
        worker_count=1,
    )
    env.save(env.environment, overwrite=True)

    def release(head: str, version: str, **faults) -> dict:
        source = monorepo_context(tmp_path, head, **faults)
        return release_flow(env.environment, source=str(source), version=version)

    first = release("0002", "m1")

    assert (first["outcome"], schema(pg, database)) == ("released", "0002")
    images = first["images"]
    stages = {
        role: engine.images.get(image).labels["io.example.stage"] for role, image in images.items()
    }
    assert stages == {"api": "backend", "worker": "worker", "migrate": "migrate"}
    target = connect_target(env)
    state = target.read_state()
    assert (state.api.image, state.workers.image) == (images["api"], images["worker"])
    [job_container] = fake.job(settings.migration_job)["template"]["template"]["containers"]
    assert job_container["image"] == images["migrate"]

    second = release("0003", "m2")

    assert (second["outcome"], schema(pg, database)) == ("released", "0003")
    assert health(target.service_url()) == {"code": 200, "status": "ok"}
    released = target.read_state()
    for revision in (released.api.revision, released.workers.revision):
        label = f"io.rhesis.fake-cloudrun.revision={revision}"
        [running, *_] = engine.containers.list(filters={"label": label})
        variables = dict(e.split("=", 1) for e in running.attrs["Config"]["Env"])
        resolved = all(variables[name] == value for name, value in values.items())
        assert resolved  # compared, never printed
        definition = json.dumps(fake.revision(revision)["containers"][0]["env"])
        assert not [name for name, value in values.items() if value in definition]

    with pytest.raises(ReleaseFailed) as info:
        release("0004", "m3-broken", fail_health=True)

    assert (info.value.outcome, info.value.step) == ("rolled back", "verify-api"), str(info.value)
    assert "schema back to 0003" in str(info.value)
    assert schema(pg, database) == "0003"
    assert "description" not in columns(pg, database, "projects")
    assert target.read_state() == released
    assert health(target.service_url()) == {"code": 200, "status": "ok"}
    assert in_flight(env.environment) is None
    with Ledger(env.database_url_value()) as ledger:
        rows = repr(ledger.history(env.environment))
    assert leaked(values, [rows, str(info.value), *readable_everywhere(since=started)]) == []


def gcp_secret(fake: FakeCloudRun, settings: CloudRunSettings, *values: str) -> tuple[str, str]:
    """A Secret Manager secret with `values` as its versions, and a GcpSecret block for it
    (version 'latest'): (secret name, block reference)."""
    secret = f"jwt-{uuid.uuid4().hex[:8]}"
    for value in values:
        fake.add_secret_version(PROJECT, secret, value)
    block = GcpSecret(gcp_credentials=settings.gcp_credentials, secret_name=secret)
    block.save(f"cr-{secret}", overwrite=True)
    return secret, f"gcpsecret/cr-{secret}"


@pytest.mark.appspec
def test_secret_variables_are_secret_manager_references_pinned_per_release(
    fake, settings, make_env, database, build_backend, engine
):
    """A GcpSecret variable becomes a secretKeyRef pinned to the version that is latest
    when the release starts, on the API service, the worker service and the migration job;
    the running containers get the value from Secret Manager, no definition holds it."""
    value = f"jwt-{uuid.uuid4().hex}"
    secret, reference = gcp_secret(fake, settings, f"old-{uuid.uuid4().hex}", value)
    settings.secret_manager_endpoint = fake.url
    env = make_env(
        database,
        target="cloudrun",
        cloud_run=settings,
        registry_credentials=None,
        secrets={"JWT_SECRET_KEY": reference},
    )
    env.save(env.environment, overwrite=True)

    outcome = release_flow(env.environment, image=build_backend("cr-v1"))

    assert outcome["outcome"] == "released"
    fake.add_secret_version(PROJECT, secret, "added-after-the-release")
    pinned = {
        "name": "JWT_SECRET_KEY",
        "valueSource": {"secretKeyRef": {"secret": secret, "version": "2"}},
    }
    api = fake.service(settings.api_service)["template"]["containers"][0]
    worker = fake.service(settings.worker_service)["template"]["containers"][0]
    job = fake.job(settings.migration_job)["template"]["template"]["containers"][0]
    for container in (api, worker, job):
        assert [e for e in container["env"] if e["name"] == "JWT_SECRET_KEY"] == [pinned]
        holds_value = any(value in json.dumps(e) for e in container["env"])
        assert not holds_value
    state = connect_target(env).read_state()
    for revision in (state.api.revision, state.workers.revision):
        label = f"io.rhesis.fake-cloudrun.revision={revision}"
        [running, *_] = engine.containers.list(filters={"label": label})
        variables = dict(e.split("=", 1) for e in running.attrs["Config"]["Env"])
        resolved = variables["JWT_SECRET_KEY"] == value  # compared, never printed
        assert resolved

    # A broken release runs version 3; its rollback restores the revisions, so version 2.
    broken = build_backend("cr-broken", fail_health="1")
    with pytest.raises(ReleaseFailed, match="verify-api.*Rolled back and verified"):
        release_flow(env.environment, image=broken)
    candidate = fake.service(settings.api_service)["template"]["containers"][0]
    assert {
        "name": "JWT_SECRET_KEY",
        "valueSource": {"secretKeyRef": {"secret": secret, "version": "3"}},
    } in candidate["env"]
    assert connect_target(env).read_state() == state
    for revision in (state.api.revision, state.workers.revision):
        served = fake.revision(revision)
        assert [e for e in served["containers"][0]["env"] if e["name"] == "JWT_SECRET_KEY"] == [
            pinned
        ]


@pytest.mark.appspec
def test_a_missing_secret_version_is_refused_before_any_change(fake, settings, make_env, database):
    _, reference = gcp_secret(fake, settings)  # a block, but no such secret in Secret Manager
    settings.secret_manager_endpoint = fake.url
    env = make_env(
        database,
        target="cloudrun",
        cloud_run=settings,
        registry_credentials=None,
        secrets={"JWT_SECRET_KEY": reference},
    )
    env.save(env.environment, overwrite=True)
    changes = fake.mutations()

    with refused(ConfigurationError, match="JWT_SECRET_KEY: Secret Manager has no .*versions add"):
        release_flow(env.environment, version="never")

    assert fake.mutations() == changes
    assert in_flight(env.environment) is None


# -- the migration check reads the job's output from Cloud Logging ---------------------------
DROP_COLUMN = "revision 0004: drop column (ALTER TABLE projects DROP COLUMN description;)"


@pytest.fixture(scope="module")
def breaking_image(engine, registry, tmp_path_factory) -> str:
    """The example at 0003 plus a revision 0004 that drops a column the running version uses."""
    revision = (
        '"""drop a column"""\n\nfrom alembic import op\n\nrevision = "0004"\n'
        'down_revision = "0003"\nbranch_labels = None\ndepends_on = None\n\n\n'
        'def upgrade() -> None:\n    op.drop_column("projects", "description")\n\n\n'
        "def downgrade() -> None:\n    pass\n"
    )
    extra = {"migrations/versions/0004_drop.py": revision}
    context = backend_context(tmp_path_factory.mktemp("cr-breaking"), "0003", extra)
    auth = registry_auth(registry.username, registry.password)
    reference, _ = push_image(engine, build_image(context, "cr-breaking", {}), auth, lambda _: None)
    return reference


def columns(pg, database, table: str) -> set[str]:
    rows = pg.query(
        database, "select column_name from information_schema.columns where table_name = %s", table
    )
    return {r[0] for r in rows}


@pytest.mark.migrations
def test_a_breaking_revision_is_refused_on_cloud_run_before_any_change(
    fake, settings, make_env, database, build_backend, breaking_image, pg
):
    """The migration job's output comes from Cloud Logging, so the check lints the pending
    revision as on the Docker host: a dropped column is refused, nothing changes."""
    env = make_env(database, target="cloudrun", cloud_run=settings, registry_credentials=None)
    env.save(env.environment, overwrite=True)
    assert release_flow(env.environment, image=build_backend("cr-v1"))["outcome"] == "released"
    target = connect_target(env)
    before, changes = target.read_state(), fake.mutations()

    with refused(MigrationRefused) as info:
        release_flow(env.environment, image=breaking_image)

    message = str(info.value)
    assert DROP_COLUMN in message and "allow_breaking=['0004']" in message
    assert target.read_state() == before
    assert [m for m in fake.mutations()[len(changes) :] if "/jobs" not in m[1]] == []
    assert schema(pg, database) == "0003"
    assert "description" in columns(pg, database, "projects")
    assert health(target.service_url())["version"] == "cr-v1"
    assert in_flight(env.environment) is None

    accepted = check_migrations_task(
        env, target, breaking_image, current="0003", allow_breaking=["0004"]
    )

    assert accepted.pending == ["0004"] and "drop column" in accepted.accepted[0]
    assert accepted.rehearsal_seconds > 0  # really rehearsed, in Cloud Run jobs
    assert schema(pg, database) == "0003"  # on the scratch database


@pytest.mark.faults
@pytest.mark.migrations
def test_a_failed_cloud_run_migration_shows_alembic_error_in_the_release_failure(
    fake, settings, make_env, database, build_backend, pg
):
    env = make_env(
        database,
        target="cloudrun",
        cloud_run=settings,
        registry_credentials=None,
        migration_rehearsal=False,  # the rehearsal would refuse it first
    )
    env.save(env.environment, overwrite=True)
    first = release_flow(env.environment, image=build_backend("cr-v1", head="0001"))
    assert first["outcome"] == "released"
    target = connect_target(env)
    before = target.read_state()

    with pytest.raises(ReleaseFailed) as info:
        release_flow(env.environment, image=build_backend("cr-badmig", fail_migration="0002"))

    message = str(info.value)
    assert "failed at step 'migrate'" in message
    assert "injected failure in migration 0002" in message  # read back from Cloud Logging
    assert "Rolled back and verified" in message
    assert schema(pg, database) == "0001"
    assert target.read_state() == before


@pytest.mark.faults
@pytest.mark.migrations
def test_a_migration_check_that_reads_no_job_output_refuses_the_release(
    fake, settings, make_env, database, build_backend, pg
):
    """No entries to read (a log exclusion, or entries later than log_wait_seconds): the
    check cannot see the pending revisions, so the release is refused before any change,
    never waved through unchecked."""
    settings.log_wait_seconds = 2
    env = make_env(database, target="cloudrun", cloud_run=settings, registry_credentials=None)
    env.save(env.environment, overwrite=True)
    assert release_flow(env.environment, image=build_backend("cr-v1", head="0001"))["outcome"] == (
        "released"
    )
    target = connect_target(env)
    before, changes = target.read_state(), fake.mutations()
    fake.log_delay = 3600.0  # the entries never become listable

    with refused(StepFailed, match="cannot read the revisions.*raise log_wait_seconds"):
        release_flow(env.environment, image=build_backend("cr-v2"))

    assert target.read_state() == before
    assert [m for m in fake.mutations()[len(changes) :] if "/jobs" not in m[1]] == []
    assert schema(pg, database) == "0001"
    assert in_flight(env.environment) is None


@pytest.mark.faults
def test_a_project_without_logging_access_is_refused_by_the_preflight(fake, settings):
    fake.deny_logging()
    target = connect(settings, "staging", {})
    changes = fake.mutations()

    with pytest.raises(ConfigurationError, match=r"roles/logging\.viewer") as info:
        target.check()

    assert "logging.logEntries.list" in str(info.value)
    assert fake.mutations() == changes


def test_job_output_is_read_once_its_delayed_log_entries_arrive(fake, target, build_backend):
    """Cloud Logging lists an execution's entries some seconds after it ends: the adapter
    waits for them instead of returning an empty output."""
    fake.log_delay = 3.0
    image = build_backend("cr-v1")

    lines = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
    started = time.monotonic()
    result = target.run_oneoff(image, ["python", "-c", lines], {}, timeout=120)

    assert result.exit_code == 0
    # Both streams (their relative order is the containers' timestamps, not the program's).
    assert {"to stdout", "to stderr"} <= set(result.output.splitlines())
    assert time.monotonic() - started > 3.0
