"""What a person reads in the Prefect UI about a change: the summary of one release
(markdown, `release-<environment>`) and the ledger of an environment (a table,
`ledger-<environment>`), both views of ReleaseRecord."""

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ledger.record import ReleaseRecord


def publish_summary(record: ReleaseRecord) -> None:
    create_markdown_artifact(
        key=f"release-{record.environment}",
        markdown=summary_markdown(record),
        description=f"Release summary for {record.environment}",
    )


def summary_markdown(record: ReleaseRecord) -> str:
    steps = "\n".join(
        f"| {s.name} | {'' if s.seconds is None else f'{s.seconds:.1f} s'} | {s.outcome} |"
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
        f"| step | duration | outcome |\n|---|---|---|\n{steps}\n"
    )


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
