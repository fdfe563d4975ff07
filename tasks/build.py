"""build: the application's source (a directory, or a git URL + ref) becomes one image per
distinct stage its roles need (application spec `build`), built with BuildKit."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker import DockerHost

from blocks.application import ROLES, Build
from blocks.secrets import secret_values
from targets.build import (
    BuildPlan,
    BuiltImage,
    build_images,
    checked_plan,
    checkout,
    content_version,
    source_id,
)
from targets.errors import ConfigurationError
from tasks.retry import transient_retries


@task(name="build", cache_policy=NO_CACHE, **transient_retries(1))
def build(
    spec: Build,
    repository: str,
    *,
    source: str | None = None,
    ref: str | None = None,
    context: str | None = None,
    version: str | None = None,
    docker_host: DockerHost | None = None,
) -> dict[str, BuiltImage]:
    """Build the images of every role as repository:version (other stages get
    `version-<stage>`); `source`, `ref` and `context` override the spec's. Without a version,
    one is derived from the sources (same code, same version), so rebuilding unchanged code
    releases nothing new. The image of each role."""
    logger = get_run_logger()
    secrets = secret_values(spec.secrets, "build secret")
    with checkout(source or spec.source, ref or spec.ref, logger.info) as root:
        directory = (root / (context or spec.context)).resolve()
        if not directory.is_dir():
            raise ConfigurationError(
                f"build context {directory} does not exist in {source or spec.source}: fix the "
                "application spec's build.context (relative to the source)"
            )
        dockerfile = directory / spec.dockerfile
        sources = source_id(directory, dockerfile) if dockerfile.is_file() else None
        plan = checked_plan(
            BuildPlan(
                context=directory,
                dockerfile=dockerfile,
                repository=repository,
                version=version or content_version(sources or "src-unknown"),
                stages={role: spec.stage(role) for role in ROLES},
                args=spec.args,
                secrets=secrets,
                network=spec.network,
                engine=docker_host.base_url if docker_host else None,
                sources=sources,
            )
        )
        images = build_images(plan, logger.info)
    for built in {b.reference: b for b in images.values()}.values():
        logger.info(f"built {built.reference} ({built.image_id[:19]})")
    return images
