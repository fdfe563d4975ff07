"""The `rollback` flow, for the two things an operator means by it:

- a release is in flight or died midway: undo exactly what it changed (flows/undo.py),
  from the record it left; this is also the subflow a failing release runs;
- nothing is in flight: put back an earlier release from the ledger, the previous good
  one by default, or the one named by `to` (flows/restore.py).

    python -m flows.rollback ENVIRONMENT [RELEASE-ID]
"""

import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.environment import load_environment
from flows.history import close_entry
from flows.record import ReleaseRecord, load_record
from flows.restore import restore
from flows.undo import RollbackFailed, state_before, summarize, undo
from ledger.store import Ledger
from targets.errors import ConfigurationError

__all__ = ["RollbackFailed", "rollback"]


@flow(name="rollback", flow_run_name="rollback {environment}")
def rollback(environment: str, to: str | None = None) -> list[str]:
    """Undo the in-flight release of `environment`, or put back an earlier release.

    Args:
        environment: Name of the ReleaseEnvironment block.
        to: With no release in flight: the ledger id (or its first 8 characters) of the
            release to put back; empty means the previous good release.
    """
    env = load_environment(environment)
    record = load_record(environment)
    if record is None:
        return restore(env, to or "previous")
    if to:
        raise ConfigurationError(
            f"a release of {environment!r} is in flight (flow run {record.flow_run_id}): undo "
            "it first (run rollback without `to`), then restore an earlier release"
        )
    if _reported_by_its_release(record):
        return undo(env, record)
    return _undo_orphan(env, record)


def _reported_by_its_release(record: ReleaseRecord) -> bool:
    """Running as the subflow of the failing release itself, which reports the outcome."""
    parent = flow_run.parent_flow_run_id
    return parent is not None and str(parent) == record.flow_run_id


def _undo_orphan(env, record: ReleaseRecord) -> list[str]:
    """Undo a release whose process died, and complete its ledger entry."""
    ledger = Ledger(env.database_url_value())
    try:
        entry = next((e for e in ledger.history(env.environment) if e.id == record.ledger_id), None)
    finally:
        ledger.dispose()
    what = (
        f"release {record.version} to {env.environment} (flow run {record.flow_run_id}) ended "
        "without finishing"
    )
    try:
        restored = undo(env, record)
    except RollbackFailed as exc:
        if entry:
            close_entry(
                env, entry, summarize(env, record, f"{what}. {exc}", "rollback failed"), None
            )
        raise
    message = f"{what}; rolled back and verified: {'; '.join(restored) or 'nothing changed'}"
    get_run_logger().info(message)
    if entry:
        summary = summarize(env, record, message, "rolled back")
        close_entry(env, entry, summary, state_before(record, summary.schema_after), restored)
    return restored


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m flows.rollback ENVIRONMENT [RELEASE-ID]")
    rollback(*sys.argv[1:])
