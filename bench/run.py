"""`make bench`: how fast the release tooling gets an environment back, as ratios against
baselines measured in the same run (never absolute thresholds).

- rollback_vs_redeploy: the compensating rollback after a failed release (restart the kept
  API, put the workers back, downgrade the schema, verify) against the obvious alternative,
  re-releasing the previous image (`release(image=...)`: pull, migrate, deploy, verify).
- noop_vs_release: releasing what already runs against a full release of a new version.

Writes bench/results.json. Needs the services from scripts/services.sh.
"""

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName  # noqa: E402

from flows.release import ReleaseFailed, release  # noqa: E402
from tests import services  # noqa: E402
from tests.backend import backend_context  # noqa: E402
from tests.releases import local_environment, remove_containers  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
OUT = Path(__file__).with_name("results.json")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except ReleaseFailed as exc:
        result = exc
    return time.perf_counter() - start, result


def last_rollback_seconds(environment: str) -> float:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"rollback {environment}"]))
        )
    run = max(runs, key=lambda r: r.start_time)
    return (run.end_time - run.start_time).total_seconds()


def main() -> None:
    pg, registry = services.postgres(), services.registry()
    database = pg.create_database()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    env = local_environment(
        pg,
        registry,
        database,
        environment=f"bench-{uuid.uuid4().hex[:6]}",
        worker_count=2,
        health_budget_seconds=5,
    )
    env.save(env.environment, overwrite=True)
    name = env.environment
    samples: dict[str, list[float]] = {"release": [], "noop": [], "rollback": [], "redeploy": []}
    try:
        # All versions share the schema head, so re-releasing v1's image is a valid way back.
        v1 = release(name, source=str(backend_context(workdir, "0003")), version="bench-v1")
        for round_ in range(ROUNDS):
            version = f"bench-v2-{round_}"
            seconds, _ = timed(
                release, name, source=str(backend_context(workdir, "0003")), version=version
            )
            samples["release"].append(seconds)
            seconds, _ = timed(
                release, name, source=str(backend_context(workdir, "0003")), version=version
            )
            samples["noop"].append(seconds)
            # Back to v1 by re-releasing its image: the baseline a rollback competes with.
            seconds, _ = timed(release, name, image=v1["image"])
            samples["redeploy"].append(seconds)
            broken = backend_context(workdir, "0003", fail_health="1")
            _, failure = timed(release, name, source=str(broken), version=f"bench-bad-{round_}")
            assert isinstance(failure, ReleaseFailed), "the broken release should have failed"
            samples["rollback"].append(last_rollback_seconds(name))
    finally:
        remove_containers(services.docker_engine(), name)
        pg.drop_database(database)
        shutil.rmtree(workdir, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in samples.items()}
    results = {
        "rounds": ROUNDS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "median_seconds": medians,
        "samples_seconds": samples,
        "ratios": {
            "rollback_vs_redeploy": medians["rollback"] / medians["redeploy"],
            "noop_vs_release": medians["noop"] / medians["release"],
        },
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios"], indent=2))


if __name__ == "__main__":
    main()
