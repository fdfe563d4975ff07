"""scale-workers: run exactly N Celery workers of the release's image."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment, connect_target
from targets.base import ServiceState
from tasks.retry import transient_retries
from tasks.snapshot import describe_service


@task(name="scale-workers", cache_policy=NO_CACHE, **transient_retries(2))
def scale_workers(env: ReleaseEnvironment, image: str, version: str, count: int) -> None:
    connect_target(env).scale_workers(image, version, count)
    get_run_logger().info(f"{count} worker(s) of {version} started")


@task(name="restore-workers", cache_policy=NO_CACHE, **transient_retries(3))
def restore_workers(env: ReleaseEnvironment, state: ServiceState) -> None:
    connect_target(env).restore_workers(state)
    get_run_logger().info(f"workers restored to {describe_service(state)}")
