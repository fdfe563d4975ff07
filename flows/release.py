"""The release flow — the runbook as code, one line per step:

    snapshot what runs            (the rollback point; concurrent with the build)
    build the image               (or resolve a given image to its digest)
    push it                       (returns the pinned digest)
    check the migrations          (breaking or irreversible revisions refused; rehearsal)
    approve                       (environments that require it)
    migrate the database          (alembic upgrade head, in the new image)
    roll it out                   (flows/rollout.py: deploy the API + scale the workers,
                                   verify, promote)

Any failure after the first mutation runs the compensating `rollback` subflow, and the
release ends Failed with a message saying which step failed, why, and what was restored.
"""

from prefect import flow

from blocks.environment import load_environment
from flows.approval import approve
from flows.history import begin, succeed
from flows.plan import DEFAULT_SOURCE, Request, make_request, plan, prepare
from flows.record import SCHEMA
from flows.rollback import rollback
from flows.rollout import roll_out
from flows.summary import ReleaseSummary, Timeline
from flows.undo import ReleaseFailed, fail
from ledger.store import Entry, Expected
from tasks.check_migrations import check_migrations
from tasks.migrate import migrate

__all__ = ["ReleaseFailed", "release"]


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
        dry_run: Only plan: build, push and report what would change (the `plan` flow).
        allow_breaking: Pending revision ids whose breaking or irreversible operations
            are accepted (otherwise the release refuses them before any change).
    """
    env = load_environment(environment)
    request = make_request(
        env, source, git_ref, subdir, image, version, worker_count, allow_breaking
    )
    if dry_run:
        return plan(
            environment, source, git_ref, subdir, image, version, worker_count, allow_breaking
        )
    source_text = image or " ".join(filter(None, (source, git_ref)))
    record, entry = begin(env, "release", source_text)
    timeline = Timeline()
    try:
        summary = _release(env, record, entry, timeline, request)
    except Exception as exc:
        what = f"release {record.version} to {environment}"
        fail(env, record, entry, timeline, exc, what, lambda: rollback(environment))
    succeed(
        env, record, entry, summary, Expected(summary.image, request.workers, summary.schema_after)
    )
    return summary.to_dict()


def _release(env, record, entry: Entry, timeline: Timeline, request: Request) -> ReleaseSummary:
    workers = request.workers
    prepared = prepare(env, request, timeline)
    snapshot, pinned, version = prepared.snapshot, prepared.image, prepared.version
    record.image, record.version, record.snapshot = pinned, version, snapshot
    before = snapshot.state
    entry.workers_before, entry.workers_after = before.workers.replicas, workers
    entry.previous_image = before.api.image

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

    if prepared.is_running(workers):
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
    approve(env, version, pinned)
    record.register(SCHEMA)
    migration = timeline.run("migrate", migrate, env, pinned)
    roll_out(env, record, timeline, pinned, version, workers)
    message = (
        f"released {version} to {env.environment}: API {version} healthy, {workers} "
        f"worker(s), schema {migration.before or 'base'} -> {migration.after or 'base'}"
    )
    return summary("released", message, migration.after)
