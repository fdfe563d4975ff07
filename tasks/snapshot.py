"""snapshot: what runs before anything changes — the rollback point."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment
from ledger.record import Snapshot
from targets.base import Target, describe_service
from targets.database import read_revision
from tasks.retry import transient_retries


@task(name="snapshot", cache_policy=NO_CACHE, **transient_retries(2))
def take_snapshot(env: ReleaseEnvironment, target: Target) -> Snapshot:
    """Check the target answers, then record the running images, worker count and schema
    revision. Changes nothing; bad credentials or an unreachable target fail here."""
    target.check()
    state = target.read_state()
    revision = read_revision(env.database_url_value())
    get_run_logger().info(
        f"running in {env.environment}: API {describe_service(state.api)}; workers "
        f"{describe_service(state.workers)}; schema at {revision or 'base (empty)'}"
    )
    return Snapshot(state=state, schema_revision=revision)
