"""What the Prefect API recorded about a release: when the failed verification ended and
when the rollback subflow (which ends only after verifying the restored version) ended."""

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun


def _task_run(client, flow_run: FlowRun, name: str) -> TaskRun:
    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
    )
    [run] = [r for r in runs if r.name.rsplit("-", 1)[0] == name]
    return run


def rollback_timeline(environment: str) -> dict[str, float]:
    """Of the last release of `environment`: seconds from the end of its failed
    `verify-api` to the restored API answering healthy (the rollback's own `verify-api`)
    and to the end of the rollback subflow."""
    with get_client(sync_client=True) as client:
        releases = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"release {environment}"]))
        )
        release = max(releases, key=lambda r: r.start_time)
        [rollback] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[release.id])
            )
        )
        failed = _task_run(client, release, "verify-api")
        restored = _task_run(client, rollback, "verify-api")
    if not (failed.state.is_failed() and rollback.state.is_completed()):
        raise RuntimeError(f"expected a failed verify-api and a completed rollback: {rollback}")
    return {
        "api_healthy": (restored.end_time - failed.end_time).total_seconds(),
        "rollback_end": (rollback.end_time - failed.end_time).total_seconds(),
    }
