"""deploy: start the new API beside a restorable previous one; promote once verified."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from targets.base import ServiceState, Target, describe_service
from tasks.retry import transient_retries


@task(name="deploy-api", cache_policy=NO_CACHE, **transient_retries(2))
def deploy_api(target: Target, image: str, version: str) -> None:
    target.deploy_api(image, version)
    get_run_logger().info(f"API candidate {version} started ({image})")


@task(name="promote-api", cache_policy=NO_CACHE, **transient_retries(2))
def promote_api(target: Target) -> None:
    target.promote_api()
    get_run_logger().info("API promoted; previous version retired")


@task(name="restore-api", cache_policy=NO_CACHE, **transient_retries(3))
def restore_api(target: Target, state: ServiceState) -> None:
    target.restore_api(state)
    get_run_logger().info(f"API restored to {describe_service(state)}")
