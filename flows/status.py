"""The `status` flow: what runs in each environment now, read from the target and the
database (never from memory), compared with what the ledger says should run there.
Anything else is drift: a container changed by hand, a worker gone, a schema moved
outside a release. Published as the table artifact `release-status`, with each
environment's ledger (`ledger-<environment>`)."""

from contextlib import closing

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.environment import (
    ReleaseEnvironment,
    connect_target,
    known_environments,
    load_environment,
)
from flows.artifacts import publish_ledger
from flows.lock import in_flight
from ledger.store import Ledger, baseline
from targets.base import TargetState, describe_service
from targets.database import read_revision


@flow(name="status", flow_run_name="status")
def status(environments: list[str] | None = None) -> list[dict]:
    """What runs where, since when, and whether it matches the ledger.

    Args:
        environments: Names of ReleaseEnvironment blocks (default: every one there is).
    """
    logger = get_run_logger()
    rows = []
    for name in environments or known_environments():
        row = environment_status(load_environment(name))
        logger.info(f"{name}: {row['state']}{''.join(f'; {d}' for d in row['drift'])}")
        rows.append(row)
    create_table_artifact(
        key="release-status",
        table=[{**row, "drift": "; ".join(row["drift"]) or "-"} for row in rows],
        description="What runs in each environment, compared with the release ledger",
    )
    return rows


def environment_status(env: ReleaseEnvironment) -> dict:
    with closing(connect_target(env)) as target:
        state = target.read_state()
    schema = read_revision(env.database_url_value())
    with Ledger(env.database_url_value()) as ledger:
        records = ledger.history(env.environment)
    publish_ledger(env.environment, records)
    last = baseline(records)
    running = in_flight(env.environment)
    drift = drift_from(last, state, schema)
    if running:
        verdict = f"release in flight (flow run {running.flow_run_id})"
    elif last is None:
        verdict = "unknown: no release in the ledger"
    elif last.expected is None:
        verdict = f"unknown: the last release ended '{last.outcome}'"
    else:
        verdict = "drift" if drift else "in sync"
    return {
        "environment": env.environment,
        "state": verdict,
        "api": describe_service(state.api),
        "workers": describe_service(state.workers),
        "schema": schema or "base",
        "since": last.ended_at.isoformat(timespec="seconds") if last and last.ended_at else None,
        "last release": f"{last.short_id} {last.outcome} ({last.version})" if last else None,
        "drift": drift,
    }


def drift_from(last, state: TargetState, schema: str | None) -> list[str]:
    """How what runs differs from what the ledger's last entry expects."""
    if last is None or last.expected is None:
        return []
    expected, drift = last.expected, []
    if state.api.image != expected.image or (expected.image and not state.api.replicas):
        drift.append(
            f"API runs {describe_service(state.api)}, ledger expects {expected.image or 'none'}"
        )
    if state.workers.replicas != expected.workers:
        drift.append(f"{state.workers.replicas} worker(s) run, ledger expects {expected.workers}")
    elif expected.workers and state.workers.image != expected.image:
        drift.append(f"workers run {state.workers.image}, ledger expects {expected.image}")
    if schema != expected.schema:
        drift.append(f"schema at {schema or 'base'}, ledger expects {expected.schema or 'base'}")
    return drift
