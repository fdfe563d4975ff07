"""What a person reads in the Prefect UI about a change: its progress while it runs
(`progress-<environment>`), the summary of one release with its step timeline (markdown,
`release-<environment>`) and the ledger of an environment (a table, `ledger-<environment>`),
all views of ReleaseRecord."""

import time
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ledger.record import ReleaseRecord, Step

TIMELINE_WIDTH = 24


class Progress:
    """The progress artifact of one change, moved on as its steps end. A change runs about
    `planned` steps; the bar stops short of full until the change ends. Updates are sent in
    line (~25 ms each; sent from a second thread they contend with the run's own API calls,
    and a SQLite-backed server answers both with retries), at most one per
    `every_seconds` while the change runs: steps that end together (a no-op's four within
    0.3 s) move the bar once, and the end is always shown."""

    every_seconds = 1.0

    def __init__(self, record: ReleaseRecord, planned: int):
        self.record, self.planned = record, max(planned, 1)
        self.artifact_id: UUID | None = None
        self.shown_at: float | None = None  # time.monotonic() of the last update

    def step_ended(self, step: Step) -> None:
        if self.shown_at is not None and time.monotonic() - self.shown_at < self.every_seconds:
            return
        done = sum(1 for s in self.record.steps if s.outcome != "running")
        self._show(
            min(95.0, 100.0 * done / self.planned),
            f"{self.record.title}: {step.name} {step.outcome} ({done} steps done)",
        )

    def ended(self) -> None:
        self._show(100.0, f"{self.record.title}: {self.record.outcome}")

    def _show(self, progress: float, description: str) -> None:
        self.shown_at = time.monotonic()
        try:
            if self.artifact_id is None:
                key = f"progress-{self.record.environment}"
                self.artifact_id = create_progress_artifact(progress, key, description)
            else:
                update_progress_artifact(self.artifact_id, progress, description)
        except Exception as exc:  # noqa: BLE001 - a progress bar never fails a release
            get_run_logger().warning(f"could not show the progress: {exc}")


def publish_summary(record: ReleaseRecord) -> None:
    create_markdown_artifact(
        key=f"release-{record.environment}",
        markdown=summary_markdown(record),
        description=f"Release summary for {record.environment}",
    )


def summary_markdown(record: ReleaseRecord) -> str:
    total = max((s.started or 0) + (s.seconds or 0) for s in record.steps) if record.steps else 0
    steps = "\n".join(
        f"| {s.name} | {_seconds(s.started)} | {_seconds(s.seconds)} | {s.outcome} | "
        f"`{timeline(s, total)}` |"
        for s in record.steps
    )
    return (
        f"# {record.kind.capitalize()} to {record.environment}: {record.outcome}\n\n"
        f"{record.message}\n\n"
        f"| | |\n|---|---|\n"
        f"| image | `{record.image or '-'}` |\n"
        f"| version | {record.previous_version or '-'} -> {record.version or '-'} |\n"
        f"| schema revision | {record.schema_before or 'base'} -> "
        f"{record.schema_after or 'base'} |\n"
        f"| workers | {_count(record.workers_before)} -> {_count(record.workers_after)} |\n\n"
        f"| step | start | duration | outcome | timeline |\n|---|---|---|---|---|\n{steps}\n"
    )


def timeline(step: Step, total: float) -> str:
    """The step as a bar across the change's wall time: when it ran, at a glance."""
    if not total or step.started is None:
        return "·" * TIMELINE_WIDTH
    start = round(TIMELINE_WIDTH * step.started / total)
    length = max(1, round(TIMELINE_WIDTH * (step.seconds or 0) / total))
    start = min(start, TIMELINE_WIDTH - length)
    return "·" * start + "█" * length + "·" * (TIMELINE_WIDTH - start - length)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def publish_ledger(environment: str, records: list[ReleaseRecord]) -> None:
    create_table_artifact(
        key=f"ledger-{environment}",
        table=[ledger_row(r) for r in records],
        description=f"Releases of {environment}, newest first",
    )


def ledger_row(record: ReleaseRecord) -> dict:
    seconds = record.seconds()
    return {
        "id": record.short_id,
        "started": record.started_at.isoformat(timespec="seconds"),
        "kind": record.kind,
        "started by": record.started_by,
        "outcome": record.outcome,
        "version": f"{record.previous_version or '-'} -> {record.version or '-'}",
        "image": record.image or "-",
        "schema": f"{record.schema_before or 'base'} -> {record.schema_after or 'base'}",
        "workers": f"{_count(record.workers_before)} -> {_count(record.workers_after)}",
        "seconds": round(seconds, 1) if seconds is not None else None,
        "flow run": record.flow_run_url or "-",
    }


def _count(workers: int | None) -> str:
    return "-" if workers is None else str(workers)
