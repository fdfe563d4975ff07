"""The compensating rollback: undo exactly what the release record says happened, in
order (previous API, previous workers, then the schema with the NEW image's migration
scripts), then prove the restored environment healthy.

Runs as a subflow of a failed release, or on its own for a release whose process died:

    python -m flows.rollback ENVIRONMENT
"""

import sys

from prefect import flow, get_run_logger

from blocks.environment import connect_target, load_environment
from flows.record import API, ROLLBACK_ORDER, SCHEMA, WORKERS, load_record
from targets.database import read_revision
from targets.errors import ConfigurationError, ReleaseError
from tasks.deploy import restore_api
from tasks.migrate import downgrade
from tasks.scale import restore_workers
from tasks.snapshot import describe_service
from tasks.verify import verify_api, verify_workers


class RollbackFailed(ReleaseError):
    """The environment could not be put back; the message says what state it is in."""


@flow(name="rollback", flow_run_name="rollback {environment}")
def rollback(environment: str) -> list[str]:
    """Undo the in-flight release of `environment`; return what was restored."""
    logger = get_run_logger()
    env = load_environment(environment)
    record = load_record(environment)
    if record is None:
        raise ConfigurationError(
            f"nothing to roll back: no release of {environment!r} is in flight"
        )
    if record.snapshot is None or not record.compensations:
        logger.info("the release changed nothing: nothing to undo")
        record.clear()
        return []
    before = record.snapshot.state
    steps = {
        API: (f"API back to {describe_service(before.api)}", lambda: restore_api(env, before.api)),
        WORKERS: (
            f"workers back to {describe_service(before.workers)}",
            lambda: restore_workers(env, before.workers),
        ),
        SCHEMA: (
            f"schema back to {record.snapshot.schema_revision or 'base'}",
            lambda: _restore_schema(
                env, record.image, record.snapshot.schema_revision, record.irreversible
            ),
        ),
    }
    restored: list[str] = []
    step = "verify the restored environment"
    try:
        for name in (n for n in ROLLBACK_ORDER if n in record.compensations):
            step, undo = steps[name]
            logger.info(f"rollback: {step}")
            restored.append(undo() or step)
        step = "verify the restored environment"
        if before.api.image is not None:
            verify_api(env, connect_target(env).service_url(), before.api.version)
        if before.workers.image is not None and before.workers.replicas:
            verify_workers(env, before.workers.image, before.workers.replicas)
    except Exception as exc:
        raise RollbackFailed(
            f"rollback of {environment} FAILED at '{step}': {exc}. Done before that: "
            f"{'; '.join(restored) or 'nothing'}. Environment now: {_read_back(env)}. The "
            f"release record is kept: fix the cause, then run `python -m flows.rollback "
            f"{environment}` again."
        ) from exc
    record.clear()
    logger.info(f"rollback complete and verified: {'; '.join(restored)}")
    return restored


def _restore_schema(env, image: str, revision: str | None, irreversible: list[str]) -> str | None:
    """Downgrade to the recorded revision, unless the failed migration changed nothing.
    Refuses, loudly, to downgrade through revisions released as irreversible: the previous
    version runs on the expanded schema, and nothing is dropped behind anyone's back."""
    current = read_revision(env.database_url_value())
    if current == revision:
        get_run_logger().info(f"schema still at {revision or 'base'}: nothing to downgrade")
        return None
    if irreversible:
        note = (
            f"schema NOT downgraded: revision(s) {', '.join(irreversible)} were released as "
            f"irreversible (allow_breaking), so the schema stays at {current or 'base'}; roll "
            "forward with a fix, or restore the database from a backup"
        )
        get_run_logger().warning(note)
        return note
    downgrade(env, image, revision)
    return None


def _read_back(env) -> str:
    """What runs now, as the platform and the database say (best effort)."""
    try:
        state = connect_target(env).read_state()
        revision = read_revision(env.database_url_value())
    except Exception as exc:  # noqa: BLE001 - this is a report about a failure already
        return f"could not be read ({exc})"
    return (
        f"API {describe_service(state.api)}; workers {describe_service(state.workers)}; "
        f"schema at {revision or 'base'}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.rollback ENVIRONMENT")
    rollback(sys.argv[1])
