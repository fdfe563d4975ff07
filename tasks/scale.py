"""scale-workers: run exactly N Celery workers of the release's image."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from targets.base import ServiceState, Target, describe_service
from tasks.retry import transient_retries


@task(name="scale-workers", cache_policy=NO_CACHE, **transient_retries(2))
def scale_workers(target: Target, image: str, version: str, count: int) -> None:
    target.scale_workers(image, version, count)
    get_run_logger().info(f"{count} worker(s) of {version} started")


@task(name="restore-workers", cache_policy=NO_CACHE, **transient_retries(3))
def restore_workers(target: Target, state: ServiceState) -> None:
    target.restore_workers(state)
    get_run_logger().info(f"workers restored to {describe_service(state)}")
