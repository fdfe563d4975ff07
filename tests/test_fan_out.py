"""One code change released to many environments (flows/fan_out.py): built and pushed once,
released to each environment as a subflow of the fan-out run, one environment failing
rolled back on its own, bad input refused before any change."""

import time
import uuid
from collections import Counter

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from flows.errors import ReleaseFailed
from flows.fan_out import release_to_many
from ledger.store import Ledger
from targets.docker_host import L_ENV
from targets.errors import ConfigurationError
from tests.backend import TEST_REPOSITORY, backend_context
from tests.releases import (
    local_environment,
    logged,
    refused,
    remove_containers,
    served_version,
)

# The tests share one fleet of environments (the failure test starts from the first
# release), so they run in order in one process.
pytestmark = [pytest.mark.docker, pytest.mark.migrations, pytest.mark.xdist_group("fan_out")]


@pytest.fixture(scope="module")
def fleet(pg, registry, engine) -> list:
    """Three saved Docker-host environments (staging, eu, us, say) sharing one image
    repository, each with its own database, API port and containers."""
    repository = f"{TEST_REPOSITORY}-fan-out-{uuid.uuid4().hex[:6]}"
    databases = [pg.create_database() for _ in range(3)]
    envs = [local_environment(pg, registry, db, image_repository=repository) for db in databases]
    for env in envs:
        env.save(env.environment, overwrite=True)
    yield envs
    for env in envs:
        remove_containers(engine, env.environment)
    for database in databases:
        pg.drop_database(database)


@pytest.fixture(scope="module")
def released(fleet, tmp_path_factory):
    """The final state of version v1 released to the whole fleet by one fan-out run."""
    source = backend_context(tmp_path_factory.mktemp("fan-out"), "0003")
    names = [env.environment for env in fleet]
    return release_to_many(names, source=str(source), version="v1", return_state=True)


def newest_ledger_row(env):
    with Ledger(env.database_url_value()) as ledger:
        return ledger.history(env.environment, limit=1)[0]


def task_runs(flow_run_id) -> Counter:
    """How many task runs of each task (by name) a flow run has."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return Counter(run.name.rsplit("-", 1)[0] for run in runs)


def subflow_runs(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )


def test_one_change_is_built_once_and_released_everywhere(released, fleet):
    summaries = released.result()

    assert list(summaries) == [env.environment for env in fleet]
    for env in fleet:
        assert summaries[env.environment]["outcome"] == "released"
        assert served_version(env) == "v1"
        row = newest_ledger_row(env)
        assert (row.outcome, row.version) == ("released", "v1")
    # One image everywhere, built and pushed by the fan-out run alone.
    assert len({summary["image"] for summary in summaries.values()}) == 1
    run_id = released.state_details.flow_run_id
    assert (task_runs(run_id)["build"], task_runs(run_id)["push"]) == (1, 1)
    # Each environment's release is a subflow of the fan-out run, which resolves the
    # pushed image instead of building one.
    releases = subflow_runs(run_id)
    assert sorted(run.name for run in releases) == sorted(f"release {e.environment}" for e in fleet)
    for run in releases:
        assert run.state.is_completed()
        steps = task_runs(run.id)
        assert "build" not in steps and steps["resolve-image"] == 1, steps
    # All at the same revision with the same settings: the image's revisions were probed
    # once, and the other releases' checks took that answer.
    reused = "the answer of another environment's probe stands"
    deadline = time.monotonic() + 15  # log lines reach the API in batches
    while True:
        took = [run.name for run in releases if logged(reused, run.id, seconds=0)]
        if len(took) >= len(releases) - 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(took) == len(releases) - 1, took


def test_bad_input_is_refused_before_any_change(fleet, engine, pg, registry, tmp_path):
    first, second = fleet[0].environment, fleet[1].environment
    mine = {"label": [f"{L_ENV}={first}", f"{L_ENV}={second}"]}
    before = sorted(c.id for c in engine.containers.list(all=True, filters=mine))
    elsewhere = local_environment(pg, registry, "unused")  # its own image repository
    elsewhere.save(elsewhere.environment, overwrite=True)
    source = str(backend_context(tmp_path, "0003"))

    state = release_to_many([first, "nowhere", second], source=source, return_state=True)
    with refused(ConfigurationError, match="unknown environment 'nowhere'"):
        state.result()
    assert not task_runs(state.state_details.flow_run_id)  # nothing built, nothing released
    with refused(ConfigurationError, match="release the others separately"):
        release_to_many([first, elsewhere.environment], source=source)
    with refused(ConfigurationError, match=f"{first} named more than once"):
        release_to_many([first, second, first], source=source)
    with refused(ConfigurationError, match="no environment given"):
        release_to_many([], source=source)
    with refused(ConfigurationError, match="worker_count must be 0 or more"):
        release_to_many([first], source=source, worker_count=-1)

    assert sorted(c.id for c in engine.containers.list(all=True, filters=mine)) == before


def test_one_environment_failing_is_rolled_back_alone(released, fleet, tmp_path):
    assert released.is_completed()  # the fleet runs v1
    good, bad = fleet[:2], fleet[2]
    # Only its API answers 503, so only its release fails verification; its rollback
    # restarts the previous API container, which is healthy.
    broken = {"env": {"BACKEND_FAIL_HEALTH": "1"}, "health_budget_seconds": 3}
    bad.model_copy(update=broken).save(bad.environment, overwrite=True)
    source = str(backend_context(tmp_path, "0003", {"app/change.py": "CHANGE = 2\n"}))
    try:
        with pytest.raises(ReleaseFailed) as info:
            release_to_many([env.environment for env in fleet], source=source, version="v2")
    finally:
        bad.save(bad.environment, overwrite=True)

    failure = info.value
    message = str(failure)
    assert f"failed in 1 of 3 environment(s) ({bad.environment})" in message
    for env in good:
        assert f"- {env.environment}: released: released v2 to {env.environment}" in message
        assert served_version(env) == "v2"
        row = newest_ledger_row(env)
        assert (row.outcome, row.version) == ("released", "v2")
    assert f"- {bad.environment}: rolled back: " in message
    assert "Rolled back and verified" in message
    assert (failure.outcome, failure.changed) == ("rolled back", True)
    assert served_version(bad) == "v1"
    assert newest_ledger_row(bad).outcome == "rolled back"
