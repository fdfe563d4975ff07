"""What every release and rollback leaves behind once it ends: its ledger entry (the
durable history), the ledger table artifact (`ledger-<environment>`), and a notification
through the environment's notification block, each with a link to the flow run."""

from datetime import UTC, datetime

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

from blocks.environment import ReleaseEnvironment
from flows.record import ReleaseRecord, claim
from flows.summary import ReleaseSummary
from ledger.store import Entry, Expected, Ledger
from targets.errors import ConfigurationError

# The entry flows, by what starts them (flows/entry.py).
STARTED_BY = {
    "nightly-staging": "schedule",
    "release-from-ui": "ui",
    "release-pushed-image": "event",
}


def begin(
    env: ReleaseEnvironment, kind: str, source: str, schema_undo: str = "downgrade"
) -> tuple[ReleaseRecord, Entry]:
    """Start a change of the environment: check its notification block, take the release
    record (the lock), open the ledger entry. Nothing has changed yet if this fails."""
    notifier(env)
    record = claim(env.environment, str(flow_run.id) if flow_run.id else None)
    try:
        entry = open_entry(env, kind, source)
    except Exception:
        record.clear()
        raise
    record.ledger_id, record.schema_undo = entry.id, schema_undo
    record.save()
    return record, entry


def succeed(
    env: ReleaseEnvironment,
    record: ReleaseRecord,
    entry: Entry,
    summary: ReleaseSummary,
    expected: Expected,
) -> None:
    """End a change that completed: release the lock, record, report."""
    record.clear()
    close_entry(env, entry, summary, expected)
    summary.publish()
    get_run_logger().info(summary.message)


def open_entry(env: ReleaseEnvironment, kind: str, source: str | None = None) -> Entry:
    """Add the entry of a release (or restore) that is starting: before its first change,
    so even a process that dies midway leaves a trace the rollback flow completes."""
    ledger = Ledger(env.database_url_value())
    try:
        return ledger.add(
            Entry(
                environment=env.environment,
                kind=kind,
                started_by=started_by(),
                flow_run_id=str(flow_run.id) if flow_run.id else None,
                flow_run_url=run_link(),
                source=source,
            )
        )
    finally:
        ledger.dispose()


def close_entry(
    env: ReleaseEnvironment,
    entry: Entry,
    summary: ReleaseSummary,
    expected: Expected | None,
    rollback: list[str] | None = None,
) -> None:
    """Record how it ended, show the ledger, tell the notification block. Never raises:
    the release's own outcome must not be masked by its bookkeeping."""
    logger = get_run_logger()
    entry.ended_at = datetime.now(UTC)
    entry.outcome, entry.message = summary.outcome, summary.message
    entry.version, entry.image = summary.version, summary.image
    entry.previous_version = summary.previous_version
    entry.schema_before, entry.schema_after = summary.schema_before, summary.schema_after
    entry.steps = summary.to_dict()["steps"]
    entry.rollback = list(rollback or [])
    entry.expected = expected
    try:
        ledger = Ledger(env.database_url_value())
        try:
            ledger.save(entry)
            publish_ledger(env.environment, ledger.history(env.environment))
        finally:
            ledger.dispose()
    except Exception as exc:  # noqa: BLE001 - reported, the outcome stands
        logger.warning(f"could not write the ledger entry {entry.short_id}: {exc}")
    notify(env, f"{env.environment}: {summary.outcome}", f"{summary.message}\n{entry.flow_run_url}")


def publish_ledger(environment: str, entries: list[Entry]) -> None:
    create_table_artifact(
        key=f"ledger-{environment}",
        table=[ledger_row(e) for e in entries],
        description=f"Releases of {environment}, newest first",
    )


def ledger_row(entry: Entry) -> dict:
    seconds = (entry.ended_at - entry.started_at).total_seconds() if entry.ended_at else None
    return {
        "id": entry.short_id,
        "started": entry.started_at.isoformat(timespec="seconds"),
        "kind": entry.kind,
        "started by": entry.started_by,
        "outcome": entry.outcome,
        "version": f"{entry.previous_version or '-'} -> {entry.version or '-'}",
        "image": entry.image or "-",
        "schema": f"{entry.schema_before or 'base'} -> {entry.schema_after or 'base'}",
        "workers": f"{entry.workers_before} -> {entry.workers_after}",
        "seconds": round(seconds, 1) if seconds is not None else None,
        "flow run": entry.flow_run_url or "-",
    }


def notifier(env: ReleaseEnvironment) -> NotificationBlock | None:
    """The environment's notification block, checked before anything changes."""
    if not env.notification_block:
        return None
    try:
        block = Block.load(env.notification_block)
    except ValueError as exc:
        raise ConfigurationError(
            f"notification block {env.notification_block!r} of environment "
            f"{env.environment!r} cannot be loaded ({exc}): create it, or fix the "
            "environment's notification_block ('<block-type-slug>/<name>')"
        ) from None
    if not isinstance(block, NotificationBlock):
        raise ConfigurationError(
            f"block {env.notification_block!r} is a {type(block).__name__}, not a notification "
            "block (e.g. custom-webhook, slack-webhook, ms-teams-webhook)"
        )
    return block


def notify(env: ReleaseEnvironment, subject: str, body: str) -> None:
    logger = get_run_logger()
    try:
        block = notifier(env)
        if block is not None:
            block.notify(body, subject)
    except Exception as exc:  # noqa: BLE001 - a lost notification must not fail the release
        logger.warning(f"notification through {env.notification_block!r} failed: {exc}")


def run_link() -> str | None:
    """Where the flow run shows in the UI (the API's address when no UI URL is set)."""
    if flow_run.id is None:
        return None
    link = flow_run.ui_url
    if link is None or link.startswith("None"):
        base = str(PREFECT_API_URL.value() or "").removesuffix("/api")
        link = f"{base}/runs/flow-run/{flow_run.id}"
    return link


def started_by() -> str:
    """What started this run: the entry flow at the root of it, a deployment run from the
    UI or `prefect deployment run`, or a direct Python call."""
    root_id = flow_run.root_flow_run_id
    with get_client(sync_client=True) as client:
        root = client.read_flow_run(root_id)
        flow_name = client.read_flow(root.flow_id).name
    if flow_name in STARTED_BY:
        return STARTED_BY[flow_name]
    if root.auto_scheduled:
        return "schedule"
    if root.deployment_id:
        return f"deployment run ({root.created_by.display_value if root.created_by else 'api'})"
    return "python"
