"""Helpers for tests that run the release flow and check what a user would."""

import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect_docker import DockerRegistryCredentials

from blocks.environment import ReleaseEnvironment
from flows.errors import ReleaseFailed
from flows.release import release
from targets.database import read_revision
from targets.docker_host import L_ENV, L_SERVICE, L_VERSION
from tests.backend import TEST_REPOSITORY, backend_context
from tests.services import free_port


def release_from(env, tmp_path, version: str, head: str = "0003", **faults) -> dict:
    """Release a checkout of the example backend at `head` (with optional faults)."""
    source = backend_context(tmp_path / version, head, **faults)
    return release(env.environment, source=str(source), version=version)


def served_version(env) -> str:
    """The version the Docker-host API answers with on /health (which must be 200)."""
    response = httpx.get(f"http://127.0.0.1:{env.api_port}/health", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def running(engine, env, service: str) -> list:
    """The running containers of one service ("api" or "worker") of an environment."""
    filters = {"label": [f"{L_ENV}={env.environment}", f"{L_SERVICE}={service}"]}
    return engine.containers.list(filters=filters)


def worker_versions(engine, env) -> list[str]:
    return [w.labels[L_VERSION] for w in running(engine, env, "worker")]


def schema(pg, database) -> str | None:
    """The database's Alembic revision (None: never migrated). Takes the database's name,
    so a failing assertion never prints its URL (which holds the password)."""
    return read_revision(pg.url(database))


def task_run_counts(flow_run_id) -> dict[str, int]:
    """How many times each task of a flow run ran (retries included), by task name."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    runs = settled_task_runs([run.id for run in runs])
    return {run.name.rsplit("-", 1)[0]: run.run_count for run in runs}


def settled_task_runs(ids: list, seconds: float = 30) -> list:
    """The task runs as the server has them once each has reached a final state. Prefect 3
    reports task runs through events, which a busy server records a moment later."""
    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_task_run(run_id) for run_id in ids]
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.3)


def local_environment(pg, registry, database: str, **overrides) -> ReleaseEnvironment:
    """A Docker-host environment on the local services, tuned for quick verification."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    fields = dict(
        environment=name,
        # Its own repository: tests reuse version names (v1, v2) for different code, and a
        # release never moves a tag to another image.
        image_repository=f"{TEST_REPOSITORY}-{name}",
        registry_credentials=DockerRegistryCredentials(
            username=registry.username, password=registry.password, registry_url=registry.address
        ),
        database_url=Secret(value=pg.url(database)),
        api_port=free_port(),
        health_budget_seconds=10,
        health_consecutive=2,
        health_interval_seconds=0.5,
        worker_count=1,
    )
    return ReleaseEnvironment(**{**fields, **overrides})


def remove_containers(engine, environment: str) -> None:
    for container in engine.containers.list(all=True, filters={"label": f"{L_ENV}={environment}"}):
        container.remove(force=True)


@contextmanager
def refused(cause: type[Exception], match: str | None = None) -> Iterator:
    """A flow call that must fail before changing anything, because of a `cause` error
    whose text matches `match` (the flows' one error contract: ReleaseFailed)."""
    with pytest.raises(ReleaseFailed, match=match) as info:
        yield info
    assert isinstance(info.value.cause, cause), repr(info.value.cause)
    assert not info.value.changed


def every(read) -> list:
    """Every item of a paged Prefect API read (e.g. `client.read_logs`)."""
    items, page = [], 200
    while batch := read(limit=page, offset=len(items)):
        items += batch
    return items


def logged(text: str, flow_run_id=None, seconds: float = 15) -> bool:
    """Whether a log line holds `text`: one of the flow run's, or else one of the latest
    200. Lines reach the API in batches, so this waits up to `seconds` for them."""
    where = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])) if flow_run_id else None
    deadline = time.monotonic() + seconds
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(where, limit=200, sort=LogSort.TIMESTAMP_DESC)
        found = any(text in log.message for log in logs)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def wait_until(check, what: str, timeout: float, interval: float = 0.5):
    """Poll `check()` until it returns something true, and return that; fail the test
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def tiny_image(engine, reference: str) -> None:
    """A one-file image of its own (a distinct digest), made without a base image."""
    content = uuid.uuid4().hex.encode()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("stamp")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    repository, tag = reference.rsplit(":", 1)
    engine.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)
