"""A backend of another shape, released by configuration alone: examples/monorepo (repository
root as build context, Dockerfile in apps/backend with a stage per role and BuildKit
syntax, SQLALCHEMY_DATABASE_URL, alembic.ini in a sub-package, gunicorn on 8080 published
elsewhere, /health without a version, three runtime secrets and a build secret) on the
Docker host, against the real engine, registry and PostgreSQL."""

import base64
import binascii
import json
import re
import time
import uuid

import httpx
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

from blocks.application import Api, ApplicationSpec, Build, Database, Health, Migrate, Worker
from blocks.environment import connect_target
from flows.errors import ReleaseFailed
from flows.lock import in_flight
from flows.release import release
from ledger.store import Ledger
from targets.docker_host import L_IMAGE
from targets.errors import ConfigurationError, StepFailed
from tasks.check_migrations import check_migrations
from tasks.verify import verify_api
from tests.backend import monorepo_context
from tests.releases import every, logged, refused, running, schema
from tests.services import SOCKET_DIR

pytestmark = [pytest.mark.appspec, pytest.mark.docker, pytest.mark.migrations]

RUNTIME_SECRETS = ("AUTH0_CLIENT_SECRET", "AUTH0_SECRET_KEY", "JWT_SECRET_KEY")


def monorepo_spec(**build) -> ApplicationSpec:
    """The reference backend's shape, as a platform engineer writes it."""
    return ApplicationSpec(
        build=Build(
            context=".",
            dockerfile="apps/backend/Dockerfile",
            stages={"api": "backend", "worker": "worker", "migrate": "migrate"},
            secrets={"example_token": build.pop("token", "secret/unset")},
            **build,
        ),
        api=Api(port=8080, port_variable=None),
        worker=Worker(command=["celery", "-A", "rhesis.backend.worker", "worker", "-l", "info"]),
        migrate=Migrate(directory="src/rhesis/backend", config="alembic.ini"),
        health=Health(version_source="none", start_period_seconds=5),
        database=Database(url_variables=["SQLALCHEMY_DATABASE_URL"]),
    )


@pytest.fixture
def secrets() -> dict[str, str]:
    """Secret blocks (names -> values) for the runtime secrets and the build token."""
    values = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in (*RUNTIME_SECRETS, "token")}
    for name, value in values.items():
        Secret(value=value).save(f"mono-{name.lower().replace('_', '-')}", overwrite=True)
    return values


def block(name: str) -> str:
    return f"secret/mono-{name.lower().replace('_', '-')}"


@pytest.fixture
def monorepo_env(make_env, pg, database, secrets):
    """A Docker-host environment for the monorepo backend: a bridge network (the API's 8080
    published on a free loopback port), PostgreSQL through its Unix socket."""

    def make(**spec_build):
        env = make_env(
            database,
            application=monorepo_spec(token=block("token"), **spec_build),
            database_url=Secret(value=pg.socket_url(database)),
            docker_network="bridge",
            docker_volumes=[f"{SOCKET_DIR}:{SOCKET_DIR}"],
            secrets={name: block(name) for name in RUNTIME_SECRETS},
            worker_count=1,
            health_budget_seconds=15,
        )
        env.save(env.environment, overwrite=True)
        return env

    return make


def health(env) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{env.api_port}/health", timeout=5)


def stage_of(engine, image: str) -> str:
    return engine.images.get(image).labels["io.example.stage"]


def readable_everywhere(since: float = 0) -> list[str]:
    """Every log line, artifact, flow-run parameter, task-run input, run state (message
    and result reference) a user could read, and the results persisted since `since` (a
    failed run's exception is: base64 of its pickle, whose strings are kept as UTF-8)."""
    with get_client(sync_client=True) as client:
        logs, artifacts = every(client.read_logs), every(client.read_artifacts)
        runs, task_runs = every(client.read_flow_runs), every(client.read_task_runs)
    states = [r.state for r in runs + task_runs if r.state]
    storage = get_current_settings().results.local_storage_path
    results = [
        path.read_bytes()
        for path in (storage.rglob("*") if storage.is_dir() else [])
        if path.is_file() and path.stat().st_mtime >= since
    ]
    return (
        [log.message for log in logs]
        + [json.dumps(a.data, default=str) + (a.description or "") for a in artifacts]
        + [json.dumps(r.parameters, default=str) for r in runs]
        + [json.dumps(t.task_inputs, default=str) for t in task_runs]
        + [(s.message or "") + json.dumps(s.data, default=str) for s in states]
        + [result.decode(errors="replace") for result in results]
        + [_unbase64(result) for result in results]
    )


def _unbase64(data: bytes) -> str:
    try:
        return base64.b64decode(data, validate=False).decode(errors="replace")
    except binascii.Error:
        return ""


def leaked(secrets: dict[str, str], texts: list[str]) -> list[str]:
    """The names of the secrets some text holds (names only: a failing test must not
    print a secret)."""
    return [name for name, value in secrets.items() if any(value in text for text in texts)]


def test_monorepo_v1_then_v2_each_role_from_its_own_stage_its_secrets_kept(
    monorepo_env, engine, pg, database, secrets, tmp_path
):
    env, started = monorepo_env(), time.time()
    first = release(env.environment, source=str(monorepo_context(tmp_path, "0003")), version="m1")

    assert (first["outcome"], schema(pg, database)) == ("released", "0003")
    assert health(env).json() == {"status": "ok"}  # 8080 in the container, api_port outside
    assert pg.query(database, "select name from projects") == [("default",)]  # data migration
    [api], [worker] = running(engine, env, "api"), running(engine, env, "worker")
    images = first["images"]
    assert stage_of(engine, images["api"]) == "backend"
    assert stage_of(engine, images["worker"]) == "worker"
    assert stage_of(engine, images["migrate"]) == "migrate"
    assert (api.labels[L_IMAGE], worker.labels[L_IMAGE]) == (images["api"], images["worker"])
    for container in (api, worker):
        environment = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert all(environment[name] == secrets[name] for name in RUNTIME_SECRETS)
    check = check_migrations(env, connect_target(env), images["migrate"], current=None)
    assert (check.pending, check.irreversible, check.accepted) == (["0001", "0002", "0003"], [], [])
    [warning] = check.warnings  # 0002 does nothing either way: reversible, no warning
    assert warning.startswith("revision 0003 cannot be rendered offline (AttributeError")
    assert "the rehearsal runs it online" in warning and check.rehearsal_seconds > 0

    second = release(env.environment, source=str(monorepo_context(tmp_path, "0004")), version="m2")

    assert (second["outcome"], schema(pg, database)) == ("released", "0004")
    assert health(env).status_code == 200
    assert second["images"]["api"] != images["api"]
    history = []
    with Ledger(env.database_url_value()) as ledger:
        history = [json.dumps(r.row(), default=str) for r in ledger.history(env.environment)]
    exposed = readable_everywhere(since=started) + history
    assert leaked({**secrets, "database password": pg.password}, exposed) == []


def test_an_unhealthy_v2_is_rolled_back_with_its_schema(
    monorepo_env, engine, pg, database, secrets, tmp_path
):
    env, started = monorepo_env(), time.time()
    release(env.environment, source=str(monorepo_context(tmp_path, "0003")), version="m1")
    before = connect_target(env).read_state()

    with pytest.raises(ReleaseFailed) as info:
        release(
            env.environment,
            source=str(monorepo_context(tmp_path, "0004", fail_health=True)),
            version="m2-broken",
        )

    assert (info.value.outcome, info.value.step) == ("rolled back", "verify-api"), str(info.value)
    errors = [str(info.value), repr(info.value.cause), *readable_everywhere(since=started)]
    assert leaked({**secrets, "database password": pg.password}, errors) == []
    assert "schema back to 0003" in str(info.value)
    assert schema(pg, database) == "0003"
    columns = pg.query(
        database, "select column_name from information_schema.columns where table_name = 'projects'"
    )
    assert "description" not in {c for (c,) in columns}
    assert connect_target(env).read_state() == before
    assert health(env).json() == {"status": "ok"}
    assert in_flight(env.environment) is None


def test_a_missing_secret_block_or_a_wrong_dockerfile_or_stage_is_refused_before_any_change(
    monorepo_env, engine, pg, database, tmp_path
):
    source = str(monorepo_context(tmp_path, "0003"))
    missing_secret = monorepo_env()
    missing_secret.secrets["JWT_SECRET_KEY"] = "secret/nobody-made-this"
    missing_secret.save(missing_secret.environment, overwrite=True)
    wrong_dockerfile = monorepo_env(source=source)
    wrong_dockerfile.application.build.dockerfile = "apps/api/Dockerfile"
    wrong_dockerfile.save(wrong_dockerfile.environment, overwrite=True)
    wrong_stage = monorepo_env(source=source)
    wrong_stage.application.build.stages["worker"] = "celery"
    wrong_stage.save(wrong_stage.environment, overwrite=True)

    with refused(ConfigurationError, match="'secret/nobody-made-this' for .*JWT_SECRET_KEY"):
        release(missing_secret.environment, source=source, version="m1")
    with refused(ConfigurationError, match="no Dockerfile at apps/api/Dockerfile"):
        release(wrong_dockerfile.environment, version="m1")
    with refused(ConfigurationError, match="stage 'celery' .* backend, worker, migrate"):
        release(wrong_stage.environment, version="m1")

    for env in (missing_secret, wrong_dockerfile, wrong_stage):
        assert running(engine, env, "api") == [] and in_flight(env.environment) is None
    assert schema(pg, database) is None


def test_health_version_read_from_a_header_or_proven_by_the_running_image(
    make_env, database, build_backend
):
    """The example backend also sends its version as the X-App-Version header."""
    header = Health(version_source="header", version_key="X-App-Version")
    env = make_env(database, worker_count=0, application=ApplicationSpec(health=header))
    env.save(env.environment, overwrite=True)
    image, other = build_backend("m-v3"), build_backend("m-v2", head="0002")

    assert release(env.environment, image=image)["outcome"] == "released"  # verified by header

    url = f"http://127.0.0.1:{env.api_port}"
    quick = {"health_budget_seconds": 1, "health_consecutive": 1}
    target = connect_target(env)
    with pytest.raises(StepFailed, match="version 'm-v3' \\(header 'X-App-Version'\\), expected"):
        verify_api(env.model_copy(update=quick), target, url, version="m-v4", image=image)
    no_header = env.model_copy(
        update={**quick, "application": ApplicationSpec(health=Health(version_source="header"))}
    )
    with pytest.raises(StepFailed, match="version None \\(header 'version'\\), expected 'm-v3'"):
        verify_api(no_header, target, url, version="m-v3", image=image)

    blind = env.model_copy(
        update={**quick, "application": ApplicationSpec(health=Health(version_source="none"))}
    )
    verify_api(blind, target, url, version="any", image=image)
    assert logged("(health.version_source='none'), so the platform's word stands for it: container")
    assert logged(f"runs {image}")
    with pytest.raises(StepFailed, match=f"runs .*, not {re.escape(other)}$"):
        verify_api(blind, target, url, version="any", image=other)
