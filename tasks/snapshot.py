"""snapshot: what runs before anything changes — the rollback point."""

from dataclasses import dataclass
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment, connect_target
from targets.base import ServiceState, TargetState
from targets.database import read_revision
from tasks.retry import transient_retries


@dataclass(frozen=True)
class Snapshot:
    state: TargetState
    schema_revision: str | None
    taken_at: str

    def to_dict(self) -> dict:
        return {
            "state": self.state.to_dict(),
            "schema_revision": self.schema_revision,
            "taken_at": self.taken_at,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Snapshot":
        return cls(TargetState.from_dict(data["state"]), data["schema_revision"], data["taken_at"])


def describe_service(state: ServiceState) -> str:
    if state.image is None or state.replicas == 0:
        return "nothing running"
    return f"{state.replicas} x {state.version} ({state.image})"


@task(name="snapshot", cache_policy=NO_CACHE, **transient_retries(2))
def take_snapshot(env: ReleaseEnvironment) -> Snapshot:
    """Check the target answers, then record the running images, worker count and schema
    revision. Changes nothing; bad credentials or an unreachable target fail here."""
    logger = get_run_logger()
    target = connect_target(env)
    target.check()
    state = target.read_state()
    revision = read_revision(env.database_url_value())
    logger.info(
        f"running in {env.environment}: API {describe_service(state.api)}; workers "
        f"{describe_service(state.workers)}; schema at {revision or 'base (empty)'}"
    )
    return Snapshot(state, revision, datetime.now(UTC).isoformat(timespec="seconds"))
