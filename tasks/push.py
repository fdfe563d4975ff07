"""push: log in with the registry credentials block, push, return the pinned digest."""

from contextlib import closing

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker import DockerHost, DockerRegistryCredentials

from blocks.docker_engine import engine_client
from blocks.environment import ReleaseEnvironment, confirm_push
from targets.images import parse_image_reference
from targets.registry import login, push_image, registry_auth, resolve_image
from tasks.retry import transient_retries


@task(name="push", cache_policy=NO_CACHE, **transient_retries(3))
def push(
    reference: str,
    credentials: DockerRegistryCredentials | None = None,
    docker_host: DockerHost | None = None,
    *,
    same_sources: bool = False,
) -> str:
    """Push repository:tag and return repository@sha256:... as the registry serves it.
    Refused credentials fail at once; unreachable registries are retried with backoff. A tag
    the registry holds for another image is not moved (`same_sources`: the tag is a version
    derived from the same sources, so the registry's image is released instead)."""
    logger = get_run_logger()
    ref = parse_image_reference(reference)
    auth = None
    with closing(engine_client(docker_host)) as client:
        if credentials is not None:
            auth = registry_auth(credentials.username, credentials.password.get_secret_value())
            login(client, credentials.registry_url or ref.registry or "", auth)
            logger.info(f"logged in to {credentials.registry_url} as {credentials.username}")
        pinned, uploaded = push_image(client, reference, auth, logger.info, same_sources)
    if not uploaded:
        logger.info(f"{pinned} was already in the registry")
    return pinned


@task(name="resolve-image", cache_policy=NO_CACHE, **transient_retries(3))
def resolve(
    reference: str,
    credentials: DockerRegistryCredentials | None = None,
    docker_host: DockerHost | None = None,
) -> tuple[str, str]:
    """For a release of an existing image: its pinned digest and version label."""
    auth = None
    if credentials is not None:
        auth = registry_auth(credentials.username, credentials.password.get_secret_value())
    with closing(engine_client(docker_host)) as client:
        pinned, version = resolve_image(client, reference, auth)
    get_run_logger().info(f"releasing existing image {pinned} (version {version})")
    return pinned, version


@task(name="confirm-push", cache_policy=NO_CACHE, **transient_retries(3))
def confirm_pushed(env: ReleaseEnvironment, pinned: str) -> None:
    """Where the registry has its own API (ECR), check that it lists the pushed digest."""
    if confirm_push(env, pinned):
        get_run_logger().info(f"the registry lists {pinned}")
