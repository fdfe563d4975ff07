"""Prepare a Prefect server for `prefect deploy --all`, idempotently:

    python -m deployments.setup

registers the block types, creates the `process` work pools that prefect.yaml names, and one
global concurrency limit (limit 1) per environment, `release-<environment>`, which every
release holds so that two releases of one environment never overlap. The environments are
the Release Environment blocks on the server: save them first, and run this again (then
`prefect deploy --all`, whose forms offer them) after adding one.
"""

from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from blocks.environment import ReleaseEnvironment
from deployments.environments import ENVIRONMENTS, release_slot

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def work_pools(prefect_yaml: Path = PREFECT_YAML) -> set[str]:
    config = yaml.safe_load(prefect_yaml.read_text())
    return {d["work_pool"]["name"] for d in config["deployments"] if d.get("work_pool")}


def main() -> None:
    ReleaseEnvironment.register_type_and_schema()
    with get_client(sync_client=True) as client:
        for pool in sorted(work_pools()):
            try:
                client.read_work_pool(pool)
                print(f"work pool {pool}: exists")
            except ObjectNotFound:
                template = ProcessWorker.get_default_base_job_template()
                client.create_work_pool(
                    WorkPoolCreate(name=pool, type="process", base_job_template=template)
                )
                print(f"work pool {pool}: created (type process)")
        environments = list(ENVIRONMENTS)
        if not environments:
            print(
                "no Release Environment blocks on this server yet: the release form will offer "
                "none. Save them (README, 'Configure an environment'), then run this and "
                "`prefect deploy --all` again."
            )
        for environment in environments:
            name = release_slot(environment)
            try:
                client.read_global_concurrency_limit_by_name(name)
                print(f"concurrency limit {name}: exists")
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
                print(f"concurrency limit {name}: created (limit 1)")


if __name__ == "__main__":
    main()
