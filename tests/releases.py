"""Helpers for tests that run the release flow and check what a user would."""

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.release import release
from tests.backend import backend_context


def release_from(env, tmp_path, version: str, head: str = "0003", **faults) -> dict:
    """Release a checkout of the example backend at `head` (with optional faults)."""
    source = backend_context(tmp_path / version, head, **faults)
    return release(env.environment, source=str(source), version=version)


def served_version(env) -> str:
    """The version the Docker-host API answers with on /health (which must be 200)."""
    response = httpx.get(f"http://127.0.0.1:{env.api_port}/health", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def task_run_counts(flow_run_id) -> dict[str, int]:
    """How many times each task of a flow run ran (retries included), by task name."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.run_count for run in runs}
