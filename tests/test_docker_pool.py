"""The release service in production shape, against a real `prefect server start` on
PostgreSQL: the flows packaged in an image by prefect.docker.yaml's own build and push steps,
run by two real `docker` work-pool workers (each flow run in its own container); and the
faults of the service itself: a worker SIGKILLed mid-release, a worker restarted while a
release waits for its environment's slot, the Prefect server killed and restarted
mid-release."""

import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect_docker import DockerRegistryCredentials

from blocks.environment import ReleaseEnvironment
from ledger.record import ReleaseRecord
from ledger.store import Ledger
from targets.docker_host import L_VERSION
from tests.releases import (
    local_environment,
    remove_containers,
    running,
    served_version,
    wait_until,
)
from tests.stack import (
    REPO_ROOT,
    RUN_TIMEOUT,
    Stack,
    deploy,
    finished,
    logs,
    run,
    start,
    start_server,
    start_worker,
)

pytestmark = [
    pytest.mark.triggers,
    pytest.mark.faults,
    pytest.mark.docker,
    pytest.mark.xdist_group("docker-pool"),  # one stack: server, two workers, the flows image
]

RELEASE = "release-from-ui/release"
WORKERS = ("pool-worker-1", "pool-worker-2")


@pytest.fixture(scope="module")
def server(processes, tmp_path_factory, pg) -> Iterator[Stack]:
    """`prefect server start` on its own PostgreSQL database."""
    database = pg.create_database()
    url = pg.url(database).replace("postgresql://", "postgresql+asyncpg://", 1)
    yield start_server(
        processes, tmp_path_factory.mktemp("pool-server"), database_url=url, deployed=False
    )
    processes.stop_all()  # before its database goes
    pg.drop_database(database)


@pytest.fixture(scope="module")
def environments(server, pg, registry, engine) -> Iterator[dict[str, ReleaseEnvironment]]:
    """`alpha` and `beta`: Docker-host environments on databases of their own. alpha's
    verification is slow on purpose (30 healthy answers 1 s apart), so that a second
    release of alpha finds the first still in flight."""
    saved, databases = {}, []
    for name, health in (("alpha", 30), ("beta", 2)):
        databases.append(pg.create_database())
        env = local_environment(
            pg,
            registry,
            databases[-1],
            environment=f"{server.prefix}-{name}",
            health_consecutive=health,
            health_interval_seconds=1.0,
            health_budget_seconds=60,
        )
        with server.settings():
            env.save(name, overwrite=True)
        saved[name] = env
    yield saved
    for env in saved.values():
        remove_containers(engine, env.environment)
    for database in databases:
        pg.drop_database(database)


@pytest.fixture(scope="module")
def deployed(server, environments, registry) -> str:
    """prefect.docker.yaml deployed: its build step builds the flows image from this
    checkout, its push step pushes it with the `release-flows-registry` block."""
    with server.settings():
        DockerRegistryCredentials(
            username=registry.username,
            password=registry.password,
            registry_url=registry.address,
        ).save("release-flows-registry", overwrite=True)
    image = f"{registry.address}/tests/rhesis-release-flows"
    deploy(server, "prefect.docker.yaml", RELEASE_FLOWS_IMAGE=image)
    return image


@pytest.fixture(scope="module")
def workers(processes, server, deployed) -> tuple[str, ...]:
    for name in WORKERS:  # their flow runs start in containers: no warm engine
        start_worker(processes, server, "release-docker", name, "--limit", "1", warm=False)
    return WORKERS


def state_of(stack: Stack, run: FlowRun) -> FlowRun:
    with stack.client() as client:
        return client.read_flow_run(run.id)


def worker_of(stack: Stack, run: FlowRun) -> str:
    """The worker that started `run`'s container (the label it gives the run it submits)."""
    return wait_until(
        lambda: state_of(stack, run).labels.get("prefect.worker.name"),
        f"a worker to pick up {run.name}",
        timeout=60,
    )


def waiting_for_slot(stack: Stack, run: FlowRun) -> bool:
    return "taking the release slot" in logs(stack, run.id)


def releases(env: ReleaseEnvironment) -> list[ReleaseRecord]:
    """The environment's ledger rows, oldest first."""
    with Ledger(env.database_url_value()) as ledger:
        return list(reversed(ledger.history(env.environment)))


def test_prefect_docker_yaml_deploys_what_prefect_yaml_deploys():
    """The two prefect files offer the same deployments; only the pool and the packaging
    (build, push, pull) differ."""

    def comparable(name: str) -> list[dict]:
        config = yaml.safe_load((REPO_ROOT / name).read_text())
        return [{k: v for k, v in d.items() if k != "work_pool"} for d in config["deployments"]]

    assert comparable("prefect.docker.yaml") == comparable("prefect.yaml")
    packaged = yaml.safe_load((REPO_ROOT / "prefect.docker.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in packaged["deployments"]}
    assert pools == {"release-docker"}
    assert packaged["build"] and packaged["push"] and packaged["pull"]


def test_setup_creates_both_pools_once_and_the_deployments_run_the_pushed_flows_image(
    server, deployed
):
    """`deployments.setup` again changes nothing; the packaged deployments run the flows
    image their push step pushed (on the docker pool), the others stay on the process pool."""
    again = run([sys.executable, "-m", "deployments.setup"], server.env)
    assert "work pool release: exists" in again and "work pool release-docker: exists" in again
    with server.client() as client:
        pools = {pool.name: pool.type for pool in client.read_work_pools()}
        deployments = client.read_deployments()
    assert {"release": "process", "release-docker": "docker"}.items() <= pools.items()
    images = {d.job_variables["image"] for d in deployments}
    assert {d.work_pool_name for d in deployments} == {"release-docker"}
    [image] = images  # one image for all six, built and pushed once
    assert image.startswith(f"{deployed}:")
    assert len(deployments) == 6


def test_two_workers_release_two_environments_at_once_and_one_environment_at_a_time(
    server, environments, workers, processes, build_backend
):
    """alpha v1 and beta (built from source inside its flow container) run at the same time
    on the two workers; the worker running alpha v1 is SIGKILLed mid-release; a second
    release of alpha waits for alpha's slot, and the worker that took it is restarted while
    it waits. Every release completes, once, and alpha's two never overlap."""
    alpha, beta = environments["alpha"], environments["beta"]
    v1, v2 = build_backend("pool-v1"), build_backend("pool-v2")

    alpha_v1 = start(server, RELEASE, environment="alpha", image=v1)
    beta_b1 = start(server, RELEASE, environment="beta", source="examples/backend", version="b1")
    wait_until(lambda: waiting_for_slot(server, alpha_v1), "alpha v1 to start", RUN_TIMEOUT)
    killed = worker_of(server, alpha_v1)
    assert worker_of(server, beta_b1) != killed  # each worker runs one flow at a time
    processes.kill(killed)  # SIGKILL: the worker, not the run's container
    processes.restart(killed)  # the next worker

    alpha_v2 = start(server, RELEASE, environment="alpha", image=v2)
    wait_until(lambda: waiting_for_slot(server, alpha_v2), "alpha v2 to wait", RUN_TIMEOUT)
    restarted = worker_of(server, alpha_v2)
    alpha_v1_state = state_of(server, alpha_v1).state
    assert not alpha_v1_state.is_final(), f"alpha v1 ended ({alpha_v1_state.name}) too soon"
    processes.stop(restarted, grace=5)  # SIGTERM, SIGKILL after 5 s: alpha v2 still waits
    processes.restart(restarted)

    runs = {run.name: finished(server, run.id) for run in (alpha_v1, beta_b1, alpha_v2)}
    assert {name: run.state.name for name, run in runs.items()} == dict.fromkeys(
        runs, "Completed"
    ), "\n".join(logs(server, run.id)[-3000:] for run in runs.values())
    first, second = releases(alpha)
    [built] = releases(beta)
    assert [r.outcome for r in (first, second, built)] == ["released"] * 3
    assert (first.version, second.version, built.version) == ("pool-v1", "pool-v2", "b1")
    assert first.ended_at <= second.started_at  # one alpha release at a time
    assert built.started_at < first.ended_at and first.started_at < built.ended_at  # at once
    assert (served_version(alpha), served_version(beta)) == ("pool-v2", "b1")


def test_the_server_killed_and_restarted_mid_release_leaves_a_true_ledger_row(
    server, environments, workers, processes, build_backend, engine
):
    """The Prefect server is SIGKILLed while alpha's release verifies its API, and started
    again 10 s later on the same database: the release completes (or is rolled back), and
    the ledger row, the run's state and what serves all agree."""
    alpha = environments["alpha"]
    before = len(releases(alpha))
    version = f"pool-{uuid.uuid4().hex[:6]}"
    run = start(server, RELEASE, environment="alpha", image=build_backend(version))
    wait_until(
        lambda: version in [c.labels[L_VERSION] for c in running(engine, alpha, "api")],
        "the new API to start (then it is verified for 30 s)",
        RUN_TIMEOUT,
    )

    processes.kill("server")
    time.sleep(10)
    processes.restart("server")
    processes.wait_http("server", f"{server.api_url}/health")

    done = finished(server, run.id)
    [row] = releases(alpha)[before:]
    assert row.ended_at is not None and row.outcome in ("released", "rolled back"), row
    if row.outcome == "released":
        assert done.state.is_completed() and served_version(alpha) == version
    else:
        assert done.state.is_failed() and served_version(alpha) != version
