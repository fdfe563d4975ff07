"""The compensating subflow: undo exactly what a change's record says happened, in order
(the previous API, the previous workers, then the schema), then prove the restored
environment healthy. Run by a failing release or restore in its own process, through the
saga's target adapter, and by the `rollback` flow for a change whose process died (through
the adapter its resumed saga connected).

The schema goes back with the migration scripts of the image that knows the revisions to
undo: the NEW image when a release is undone (the old one does not know the new
revisions), the image that ran before when a restore of an earlier release is undone.
"""

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks.environment import ReleaseEnvironment
from flows.errors import RollbackFailed
from ledger.record import ROLLBACK_ORDER, Compensation, ReleaseRecord
from targets.base import Target, describe_service
from targets.database import read_revision
from tasks.deploy import restore_api
from tasks.migrate import downgrade, upgrade_to
from tasks.scale import restore_workers
from tasks.verify import verify_api, verify_workers


class Restored(BaseModel):
    done: list[str]  # what was put back, in order
    schema_revision: str | None  # where the schema is afterwards


def compensate(env: ReleaseEnvironment, target: Target, record: ReleaseRecord) -> Restored:
    """Run the compensating subflow for `record` through the saga's own `target` adapter
    (never a second connection); what was restored. Raises RollbackFailed, saying what
    state the environment is in, if it cannot."""
    return _Compensation(env, target).run(record)


class _Compensation:
    """The environment and the target adapter the subflow works through: bound to the
    flow as `self`, which Prefect neither validates nor stores with the run's parameters
    (an adapter holds live clients and credentials)."""

    def __init__(self, env: ReleaseEnvironment, target: Target):
        self.env, self.target = env, target

    @flow(name="compensate", flow_run_name="compensate {record.kind} {record.short_id}")
    def run(self, record: ReleaseRecord) -> Restored:
        """Apply the record's compensations and verify; what was restored."""
        logger = get_run_logger()
        env, target = self.env, self.target
        before, schema = record.snapshot.state, record.snapshot.schema_revision
        done: list[str] = []
        step = "verify the restored environment"
        try:
            for compensation in (c for c in ROLLBACK_ORDER if c in record.compensations):
                match compensation:
                    case Compensation.API:
                        step = f"API back to {describe_service(before.api)}"
                        restore_api(target, before.api)
                    case Compensation.WORKERS:
                        step = f"workers back to {describe_service(before.workers)}"
                        restore_workers(target, before.workers)
                    case Compensation.SCHEMA:
                        step = f"schema back to {schema or 'base'}"
                        note, schema = _restore_schema(env, target, record)
                        step = note or step
                logger.info(f"rollback: {step}")
                done.append(step)
            step = "verify the restored environment"
            if before.api.image is not None:
                url = target.service_url()
                verify_api(env, target, url, version=before.api.version, image=before.api.image)
            if before.workers.image is not None and before.workers.replicas:
                verify_workers(env, target, before.workers.image, before.workers.replicas)
        except Exception as exc:
            raise RollbackFailed(
                f"rollback of {env.environment} FAILED at '{step}': {exc}. Done before that: "
                f"{'; '.join(done) or 'nothing'}. Environment now: {_read_back(env, target)}. "
                f"The release record is kept: fix the cause, then run `python -m flows.rollback "
                f"{env.environment}` again."
            ) from exc
        logger.info(f"rollback complete and verified: {'; '.join(done)}")
        return Restored(done=done, schema_revision=schema)


def _restore_schema(
    env: ReleaseEnvironment, target: Target, record: ReleaseRecord
) -> tuple[str | None, str | None]:
    """Move the schema back to the recorded revision, unless it never moved: (a note when
    it was not moved, the revision it is at). Refuses, loudly, to downgrade through
    revisions released as irreversible: the previous version runs on the expanded schema,
    and nothing is dropped behind anyone's back."""
    revision = record.snapshot.schema_revision
    current = read_revision(env.database_url_value())
    if current == revision:
        get_run_logger().info(f"schema still at {revision or 'base'}: nothing to move back")
        return None, revision
    if record.schema_undo == "upgrade":
        upgrade_to(env, target, record.schema_image or record.snapshot.state.api.image, revision)
        return None, revision
    if record.irreversible:
        note = (
            f"schema NOT downgraded: revision(s) {', '.join(record.irreversible)} were released "
            f"as irreversible (allow_breaking), so the schema stays at {current or 'base'}; "
            "roll forward with a fix, or restore the database from a backup"
        )
        get_run_logger().warning(note)
        return note, current
    downgrade(env, target, record.schema_image or record.image, revision)
    return None, revision


def _read_back(env: ReleaseEnvironment, target: Target) -> str:
    """What runs now, as the platform and the database say (best effort)."""
    try:
        state = target.read_state()
        revision = read_revision(env.database_url_value())
    except Exception as exc:  # noqa: BLE001 - this is a report about a failure already
        return f"could not be read ({exc})"
    return (
        f"API {describe_service(state.api)}; workers {describe_service(state.workers)}; "
        f"schema at {revision or 'base'}"
    )
