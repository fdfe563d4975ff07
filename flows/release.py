"""The release flow — the runbook as code, one line per step:

    snapshot what runs            (the rollback point; concurrent with the build)
    build the image               (or resolve a given image to its digest)
    push it                       (returns the pinned digest)
    check the migrations          (breaking or irreversible revisions refused; rehearsal;
                                   on a Docker host, of the built image while it is pushed)
    approve                       (environments that require it)
    migrate the database          (alembic upgrade head, in the new image)
    roll it out                   (flows/rollout.py: deploy the API + scale the workers,
                                   verify, promote)

It runs as a saga (flows/saga.py): each mutating step registers its compensation before it
runs, and a failure after the first one runs the compensating subflow, which restores the
API, the workers and the schema and verifies them. Whatever fails, the flow raises
ReleaseFailed saying which step failed, why, and what was restored.
"""

from functools import partial

from prefect import flow

from blocks.environment import load_environment
from flows.approval import approve
from flows.errors import ReleaseFailed
from flows.plan import plan
from flows.prepare import ReleaseRequest, documented, prepare
from flows.rollout import roll_out
from flows.saga import Saga, StepRun
from ledger.record import Compensation, Snapshot
from tasks.check_migrations import check_migrations
from tasks.migrate import migrate

# The steps a release runs, for its progress bar (a no-op ends after the push).
RELEASE_STEPS = (
    "snapshot",
    "build",
    "push",
    "confirm-push",
    "check-migrations",
    "migrate",
    "scale-workers",
    "deploy-api",
    "verify-api",
    "verify-workers",
    "promote-api",
)


@flow(name="release", flow_run_name="release {environment}")
@documented(
    "Release the backend to `environment`.",
    dry_run="Only plan: build, push and report what would change (the `plan` flow).",
)
def release(
    environment: str,
    source: str | None = None,
    git_ref: str | None = None,
    subdir: str | None = None,
    image: str | None = None,
    version: str | None = None,
    worker_count: int | None = None,
    dry_run: bool = False,
    allow_breaking: list[str] | None = None,
) -> dict:
    request = ReleaseRequest.model_validate(locals())  # the parameters as one model
    if dry_run:
        return plan(environment, **request.model_dump())
    try:
        env = load_environment(environment)
        workers = request.workers(env)
    except Exception as exc:
        raise ReleaseFailed.refused(f"release to {environment}", exc) from exc

    source = request.describe(env.application.build)
    with Saga.begin(env, "release", source, planned=len(RELEASE_STEPS)) as saga:
        prepared = prepare(saga, request, check_built=partial(start_check, saga, request))
        snapshot, images, version = prepared.snapshot, prepared.images, prepared.version
        saga.record.took_snapshot(snapshot)
        saga.record.rolls_out(images, version, workers)
        if prepared.is_running(workers):
            message = f"{version} ({prepared.api}) already runs in {environment}: nothing to do"
            return saga.finish("no-op", message, snapshot.schema_revision)

        checking = prepared.check or start_check(saga, request, snapshot, images["migrate"])
        check = checking.result()
        saga.record.irreversible = check.irreversible
        saga.record.approved_by = approve(env, version, prepared.api)
        schema = snapshot.schema_revision
        if check.pending:
            saga.record.schema_image = images["migrate"]
            schema = saga.step(
                "migrate",
                migrate,
                env,
                saga.target,
                images["migrate"],
                compensation=Compensation.SCHEMA,
            ).after
        roll_out(saga, images, version, workers)
        return saga.finish(
            "released",
            f"released {version} to {environment}: API {version} healthy, {workers} worker(s), "
            f"schema {snapshot.schema_revision or 'base'} -> {schema or 'base'}",
            schema,
        )


def start_check(saga: Saga, request: ReleaseRequest, snapshot: Snapshot, image: str) -> StepRun:
    """Start check-migrations of `image` against the rollback point."""
    return saga.submit(
        "check-migrations",
        check_migrations,
        saga.env,
        saga.target,
        image,
        current=snapshot.schema_revision,
        allow_breaking=request.allow_breaking,
        first_release=snapshot.first_release,
    )
