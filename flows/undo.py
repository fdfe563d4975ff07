"""The compensations: undo exactly what the release record says happened, in order
(previous API, previous workers, then the schema), then prove the restored environment
healthy. The schema goes back with the migration scripts of the image recorded in the
record: the NEW image when a release is undone (the old one does not know the new
revisions), the image that ran before when a restore of an earlier release is undone."""

from collections.abc import Callable
from typing import NoReturn

from prefect import get_run_logger

from blocks.environment import ReleaseEnvironment, connect_target
from flows.history import close_entry
from flows.record import API, ROLLBACK_ORDER, SCHEMA, WORKERS, ReleaseRecord
from flows.summary import ReleaseSummary, Timeline
from ledger.store import Entry, Expected
from targets.database import read_revision
from targets.errors import ReleaseError
from tasks.deploy import restore_api
from tasks.migrate import downgrade, upgrade_to
from tasks.scale import restore_workers
from tasks.snapshot import describe_service
from tasks.verify import verify_api, verify_workers


class RollbackFailed(ReleaseError):
    """The environment could not be put back; the message says what state it is in."""


class ReleaseFailed(ReleaseError):
    """A release (or restore) failed; the message says where, why, and what the rollback
    restored."""


def fail(
    env: ReleaseEnvironment,
    record: ReleaseRecord,
    entry: Entry,
    timeline: Timeline,
    exc: Exception,
    what: str,
    compensate: Callable[[], list[str]],
) -> NoReturn:
    """End a failed change: compensate what it changed, record and report, raise."""
    if not record.compensations:
        record.clear()
        summary = summarize(env, record, f"{exc} (nothing was changed)", "failed", timeline)
        close_entry(env, entry, summary, state_before(record))
        raise exc
    failed = timeline.failed_step() or "release"
    get_run_logger().error(
        f"step '{failed}' failed: {exc}; rolling back {', '.join(record.compensations)}"
    )
    what = f"{what} failed at step '{failed}': {exc}."
    try:
        restored = compensate()
    except RollbackFailed as rollback_error:
        message = f"{what} {rollback_error}"
        close_entry(env, entry, summarize(env, record, message, "rollback failed", timeline), None)
        raise ReleaseFailed(message) from exc
    message = f"{what} Rolled back and verified: {'; '.join(restored)}."
    summary = summarize(env, record, message, "rolled back", timeline)
    close_entry(env, entry, summary, state_before(record, summary.schema_after), restored)
    raise ReleaseFailed(message) from exc


def state_before(record: ReleaseRecord, schema: str | None = None) -> Expected | None:
    """What ran before the change, with the schema revision it has now if given (None:
    the change failed before it looked)."""
    if record.snapshot is None:
        return None
    state = record.snapshot.state
    revision = record.snapshot.schema_revision if schema is None else schema
    return Expected(state.api.image, state.workers.replicas, revision)


def summarize(
    env: ReleaseEnvironment,
    record: ReleaseRecord,
    message: str,
    outcome: str,
    timeline: Timeline | None = None,
) -> ReleaseSummary:
    """The summary of a change that did not complete, published as its artifact; the
    schema revision is read back (a rollback may have kept an irreversible one)."""
    snapshot = record.snapshot
    summary = ReleaseSummary(
        env.environment,
        outcome,
        record.image,
        record.version,
        snapshot.state.api.version if snapshot else None,
        snapshot.schema_revision if snapshot else None,
        read_revision(env.database_url_value()) if snapshot else None,
        message,
        timeline.steps if timeline else [],
    )
    summary.publish()
    return summary


def undo(env: ReleaseEnvironment, record: ReleaseRecord) -> list[str]:
    """Apply the record's compensations and verify; return what was restored. The record
    is cleared on success and kept (for another attempt) on failure."""
    logger = get_run_logger()
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
            lambda: _restore_schema(env, record),
        ),
    }
    restored: list[str] = []
    step = "verify the restored environment"
    try:
        for name in (n for n in ROLLBACK_ORDER if n in record.compensations):
            step, compensate = steps[name]
            logger.info(f"rollback: {step}")
            restored.append(compensate() or step)
        step = "verify the restored environment"
        if before.api.image is not None:
            verify_api(env, connect_target(env).service_url(), before.api.version)
        if before.workers.image is not None and before.workers.replicas:
            verify_workers(env, before.workers.image, before.workers.replicas)
    except Exception as exc:
        raise RollbackFailed(
            f"rollback of {env.environment} FAILED at '{step}': {exc}. Done before that: "
            f"{'; '.join(restored) or 'nothing'}. Environment now: {_read_back(env)}. The "
            f"release record is kept: fix the cause, then run `python -m flows.rollback "
            f"{env.environment}` again."
        ) from exc
    record.clear()
    logger.info(f"rollback complete and verified: {'; '.join(restored)}")
    return restored


def _restore_schema(env: ReleaseEnvironment, record: ReleaseRecord) -> str | None:
    """Move the schema back to the recorded revision, unless it never moved. Refuses,
    loudly, to downgrade through revisions released as irreversible: the previous version
    runs on the expanded schema, and nothing is dropped behind anyone's back."""
    revision = record.snapshot.schema_revision
    current = read_revision(env.database_url_value())
    if current == revision:
        get_run_logger().info(f"schema still at {revision or 'base'}: nothing to move back")
        return None
    if record.schema_undo == "upgrade":
        upgrade_to(env, record.snapshot.state.api.image, revision)
        return None
    if record.irreversible:
        note = (
            f"schema NOT downgraded: revision(s) {', '.join(record.irreversible)} were released "
            f"as irreversible (allow_breaking), so the schema stays at {current or 'base'}; "
            "roll forward with a fix, or restore the database from a backup"
        )
        get_run_logger().warning(note)
        return note
    downgrade(env, record.image, revision)
    return None


def _read_back(env: ReleaseEnvironment) -> str:
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
