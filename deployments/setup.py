"""Prepare a Prefect server for `prefect deploy --all`, idempotently:

    python -m deployments.setup

registers the block types, creates the work pools that prefect.yaml (`process`: workers in a
checkout) and prefect.docker.yaml (`docker`: the flows packaged in an image) name, and one
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
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessWorker
from prefect_docker.worker import DockerWorker

from blocks.environment import ReleaseEnvironment
from deployments.environments import ENVIRONMENTS, release_slot

ROOT = Path(__file__).resolve().parents[1]
# Each prefect file's deployments run on pools served by one kind of worker.
PREFECT_FILES: dict[Path, type[BaseWorker]] = {
    ROOT / "prefect.yaml": ProcessWorker,
    ROOT / "prefect.docker.yaml": DockerWorker,
}


def work_pools() -> dict[str, type[BaseWorker]]:
    """The work pools the prefect files name, with the kind of worker that serves each."""
    pools = {}
    for path, worker in PREFECT_FILES.items():
        deployments = yaml.safe_load(path.read_text())["deployments"]
        pools.update({d["work_pool"]["name"]: worker for d in deployments if d.get("work_pool")})
    return pools


def main() -> None:
    ReleaseEnvironment.register_type_and_schema()
    with get_client(sync_client=True) as client:
        for pool, worker in sorted(work_pools().items()):
            try:
                client.read_work_pool(pool)
                print(f"work pool {pool}: exists")
            except ObjectNotFound:
                template = worker.get_default_base_job_template()
                client.create_work_pool(
                    WorkPoolCreate(name=pool, type=worker.type, base_job_template=template)
                )
                print(f"work pool {pool}: created (type {worker.type})")
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
