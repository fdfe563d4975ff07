"""build: a local directory or a git URL + ref becomes a labelled image."""

from contextlib import closing

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker import DockerHost

from blocks.docker_engine import engine_client
from targets.build import BuiltImage, build_context, build_image, content_version
from tasks.retry import transient_retries


@task(name="build", cache_policy=NO_CACHE, **transient_retries(1))
def build(
    source: str,
    repository: str,
    *,
    version: str | None = None,
    git_ref: str | None = None,
    subdir: str | None = None,
    build_args: dict[str, str] | None = None,
    docker_host: DockerHost | None = None,
) -> BuiltImage:
    """Build `source` (a directory, or a git URL checked out at `git_ref`) as
    repository:version. Without a version, one is derived from the files (same code,
    same version), so rebuilding unchanged code releases nothing new."""
    logger = get_run_logger()
    with build_context(source, git_ref, subdir, logger.info) as context:
        version = version or content_version(context)
        with closing(engine_client(docker_host)) as client:
            built = build_image(client, context, repository, version, logger.info, build_args)
    logger.info(f"built {built.reference} ({built.image_id[:19]})")
    return built
