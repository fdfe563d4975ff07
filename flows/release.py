"""The release flow — the runbook as code, one line per step:

    snapshot what runs            (the rollback point; concurrent with the build)
    build the image               (or resolve a given image to its digest)
    push it                       (returns the pinned digest)
    migrate the database          (alembic upgrade head, in the new image)
    deploy the API + scale workers (concurrently)
    verify                        (N healthy /health answers with the new version; workers ready)
    promote                       (the previous API is retired only now)

Any failure after the first mutation runs the compensating `rollback` subflow, and the
release ends Failed with a message saying which step failed, why, and what was restored.
"""

from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.environment import connect_target, load_environment, push_credentials
from flows.approval import approve
from flows.record import API, SCHEMA, WORKERS, claim
from flows.rollback import RollbackFailed, rollback
from flows.summary import ReleaseSummary, Timeline
from targets.errors import ConfigurationError, ReleaseError
from targets.images import parse_image_reference
from tasks.build import build
from tasks.check_migrations import check_migrations
from tasks.deploy import deploy_api, promote_api
from tasks.migrate import migrate
from tasks.push import confirm_pushed, push, resolve
from tasks.scale import scale_workers
from tasks.snapshot import describe_service, take_snapshot
from tasks.verify import verify_api, verify_workers

DEFAULT_SOURCE = "examples/backend"


class ReleaseFailed(ReleaseError):
    """The release failed; the message says where, why, and what the rollback restored."""


@dataclass(frozen=True)
class Request:
    """What the caller asked for (the flow's parameters, checked)."""

    source: str
    git_ref: str | None
    subdir: str | None
    image: str | None
    version: str | None
    workers: int
    dry_run: bool
    allow_breaking: list[str] | None


@flow(name="release", flow_run_name="release {environment}")
def release(
    environment: str,
    source: str = DEFAULT_SOURCE,
    git_ref: str | None = None,
    subdir: str | None = None,
    image: str | None = None,
    version: str | None = None,
    worker_count: int | None = None,
    dry_run: bool = False,
    allow_breaking: list[str] | None = None,
) -> dict:
    """Release the backend to `environment`.

    Args:
        environment: Name of the ReleaseEnvironment block to release to.
        source: Build context: a directory, or a git URL (with `git_ref`).
        git_ref: Branch, tag or commit to build when `source` is a git URL.
        subdir: Directory holding the Dockerfile inside `source` (e.g. a monorepo's 'backend').
        image: Release this existing image (tag or digest) instead of building.
        version: Version to tag and expect on /health (default: from the source's files).
        worker_count: Override the environment's worker count for this release.
        dry_run: Build, push and report the plan; change nothing in the environment.
        allow_breaking: Pending revision ids whose breaking or irreversible operations
            are accepted (otherwise the release refuses them before any change).
    """
    logger = get_run_logger()
    env = load_environment(environment)
    if image is not None:
        parse_image_reference(image)
    workers = env.worker_count if worker_count is None else worker_count
    if workers < 0:
        raise ConfigurationError(f"worker_count must be 0 or more, got {workers}")
    request = Request(source, git_ref, subdir, image, version, workers, dry_run, allow_breaking)
    record = claim(environment, str(flow_run.id) if flow_run.id else None)
    timeline = Timeline()
    try:
        summary = _release(env, record, timeline, request)
    except Exception as exc:
        if not record.compensations:
            record.clear()
            _publish_failure(env.environment, record, timeline, f"{exc} (nothing was changed)")
            raise
        failed = timeline.failed_step() or "release"
        logger.error(
            f"step '{failed}' failed: {exc}; rolling back {', '.join(record.compensations)}"
        )
        try:
            restored = rollback(environment)
        except RollbackFailed as rollback_error:
            _publish_failure(
                env.environment, record, timeline, str(rollback_error), "rollback failed"
            )
            raise ReleaseFailed(
                f"release {record.version} to {environment} failed at step '{failed}': {exc}. "
                f"{rollback_error}"
            ) from exc
        message = (
            f"release {record.version} to {environment} failed at step '{failed}': {exc}. "
            f"Rolled back and verified: {'; '.join(restored)}."
        )
        _publish_failure(env.environment, record, timeline, message, "rolled back")
        raise ReleaseFailed(message) from exc
    record.clear()
    summary.publish()
    logger.info(summary.message)
    return summary.to_dict()


def _release(env, record, timeline, request: Request) -> ReleaseSummary:
    workers = request.workers
    credentials = push_credentials(env)
    snapshot_run = timeline.submit("snapshot", take_snapshot, env)
    if request.image is None:
        built = timeline.run(
            "build",
            build,
            request.source,
            env.image_repository,
            request.version,
            request.git_ref,
            request.subdir,
            docker_host=env.docker_host,
        )
        pinned = timeline.run("push", push, built.reference, credentials, env.docker_host)
        timeline.run("confirm-push", confirm_pushed, env, pinned)
        version = built.version
    else:
        pinned, version = timeline.run(
            "resolve-image", resolve, request.image, credentials, env.docker_host
        )
    snapshot = snapshot_run.result()
    record.image, record.version, record.snapshot = pinned, version, snapshot
    record.save()
    before = snapshot.state

    def summary(outcome: str, message: str, schema_after: str | None) -> ReleaseSummary:
        return ReleaseSummary(
            env.environment,
            outcome,
            pinned,
            version,
            before.api.version,
            snapshot.schema_revision,
            schema_after,
            message,
            timeline.steps,
        )

    if (
        before.api.image == pinned
        and before.workers.image in (pinned, None)
        and before.workers.replicas == workers
    ):
        message = f"{version} ({pinned}) already runs in {env.environment}: nothing to do"
        return summary("no-op", message, snapshot.schema_revision)
    check = timeline.run(
        "check-migrations",
        check_migrations,
        env,
        pinned,
        snapshot.schema_revision,
        request.allow_breaking,
    )
    record.irreversible = check.irreversible
    if request.dry_run:
        message = (
            f"dry run: would release {version} to {env.environment} (API now "
            f"{describe_service(before.api)}, {workers} worker(s), schema at "
            f"{snapshot.schema_revision or 'base'} -> head)"
        )
        return summary("dry-run", message, snapshot.schema_revision)

    approve(env, version, pinned)
    record.register(SCHEMA)
    migration = timeline.run("migrate", migrate, env, pinned)
    record.register(API)
    record.register(WORKERS)
    api_run = timeline.submit("deploy-api", deploy_api, env, pinned, version)
    workers_run = timeline.submit("scale-workers", scale_workers, env, pinned, version, workers)
    api_run.wait(), workers_run.wait()
    api_run.result(), workers_run.result()
    timeline.run("verify-api", verify_api, env, connect_target(env).candidate_url(), version)
    if workers:
        timeline.run("verify-workers", verify_workers, env, pinned, workers)
    timeline.run("promote-api", promote_api, env)
    message = (
        f"released {version} to {env.environment}: API {version} healthy, {workers} "
        f"worker(s), schema {migration.before or 'base'} -> {migration.after or 'base'}"
    )
    return summary("released", message, migration.after)


def _publish_failure(environment, record, timeline, message, outcome="failed") -> None:
    snapshot = record.snapshot
    ReleaseSummary(
        environment,
        outcome,
        record.image,
        record.version,
        snapshot.state.api.version if snapshot else None,
        snapshot.schema_revision if snapshot else None,
        None,
        message,
        timeline.steps,
    ).publish()
