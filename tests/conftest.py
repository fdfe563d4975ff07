import hashlib
import os

# Tests wait less between retries than production does; set before tasks are imported.
os.environ.setdefault("RELEASE_RETRY_BACKOFF_SECONDS", "0.2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from blocks.environment import ReleaseEnvironment  # noqa: E402
from targets.registry import login, push_image, registry_auth  # noqa: E402
from tests import services  # noqa: E402
from tests.backend import (  # noqa: E402, F401
    BACKEND,
    TEST_REPOSITORY,
    backend_context,
    build_image,
)
from tests.releases import local_environment, remove_containers  # noqa: E402
from tests.stack import Processes  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """One Prefect test API for the session (starting one costs ~10 s)."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def engine():
    return services.docker_engine()


@pytest.fixture(scope="session")
def registry():
    return services.registry()


@pytest.fixture(scope="session")
def pg():
    return services.postgres()


@pytest.fixture
def database(pg):
    """A fresh, empty PostgreSQL database for one test."""
    name = pg.create_database()
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="session")
def build_backend(engine, registry, tmp_path_factory) -> Callable[..., str]:
    """Build and push a backend variant once per session; returns its pinned reference."""
    built: dict[tuple, str] = {}
    auth = registry_auth(registry.username, registry.password)
    login(engine, registry.address, auth)
    root = tmp_path_factory.mktemp("contexts")

    def build(
        version: str, head: str = "0003", reads_database: str | None = None, **build_args: str
    ) -> str:
        key = (version, head, reads_database, tuple(sorted(build_args.items())))
        if key not in built:
            context = backend_context(root, head, reads_database=reads_database)
            args = {k.upper(): v for k, v in build_args.items()}
            # Each variant in its own repository: one version name may be built from other
            # revisions or switches, and a tag is never moved to another image.
            variant = hashlib.sha1(repr(key).encode()).hexdigest()[:8]
            repository = f"{TEST_REPOSITORY}-{variant}"
            reference = build_image(context, version, args, repository=repository)
            built[key], _ = push_image(engine, reference, auth, lambda _: None)
        return built[key]

    return build


@pytest.fixture
def make_env(pg, registry, engine) -> Callable[..., ReleaseEnvironment]:
    """A ReleaseEnvironment on the local Docker host, its containers removed afterwards."""
    names: list[str] = []

    def make(database: str, **overrides) -> ReleaseEnvironment:
        env = local_environment(pg, registry, database, **overrides)
        names.append(env.environment)
        return env

    yield make
    for name in names:
        remove_containers(engine, name)


@pytest.fixture
def environment(make_env, database) -> ReleaseEnvironment:
    """A saved Docker-host environment with 2 workers on a fresh database."""
    env = make_env(database, worker_count=2)
    env.save(env.environment, overwrite=True)
    return env


@pytest.fixture(scope="module")
def processes(tmp_path_factory, request) -> Iterator[Processes]:
    """The background processes one test module starts (Prefect servers, workers, a second
    registry, the event bridge), each logging under the module's own folder; stopped with
    the module."""
    procs = Processes(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield procs
    procs.stop_all()
