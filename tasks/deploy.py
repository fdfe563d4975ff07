"""deploy: start the new API beside a restorable previous one; promote once verified."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment, connect_target
from targets.base import ServiceState
from tasks.retry import transient_retries
from tasks.snapshot import describe_service


@task(name="deploy-api", cache_policy=NO_CACHE, **transient_retries(2))
def deploy_api(env: ReleaseEnvironment, image: str, version: str) -> None:
    connect_target(env).deploy_api(image, version)
    get_run_logger().info(f"API candidate {version} started ({image})")


@task(name="promote-api", cache_policy=NO_CACHE, **transient_retries(2))
def promote_api(env: ReleaseEnvironment) -> None:
    connect_target(env).promote_api()
    get_run_logger().info("API promoted; previous version retired")


@task(name="restore-api", cache_policy=NO_CACHE, **transient_retries(3))
def restore_api(env: ReleaseEnvironment, state: ServiceState) -> None:
    connect_target(env).restore_api(state)
    get_run_logger().info(f"API restored to {describe_service(state)}")
