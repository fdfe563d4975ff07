"""The plan: what a release would do, without changing the environment.

    snapshot what runs                    (concurrent with the build)
    build and push the image, or resolve the given one
    compare: image, worker count, pending migrations with their safety verdict

`release` runs the same preparation before it changes anything; `plan` (and a release with
`dry_run`) stops there and publishes the plan as the artifact `plan-<environment>`.
"""

from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.environment import ReleaseEnvironment, load_environment, push_credentials
from flows.summary import Timeline
from targets.errors import ConfigurationError
from targets.images import parse_image_reference
from tasks.build import build
from tasks.check_migrations import MigrationCheck, MigrationRefused, check_migrations
from tasks.push import confirm_pushed, push, resolve
from tasks.snapshot import Snapshot, describe_service, take_snapshot

DEFAULT_SOURCE = "examples/backend"


@dataclass(frozen=True)
class Request:
    """What the caller asked for (the flow's parameters, checked)."""

    source: str
    git_ref: str | None
    subdir: str | None
    image: str | None
    version: str | None
    workers: int
    allow_breaking: list[str] | None


def make_request(
    env: ReleaseEnvironment,
    source: str,
    git_ref: str | None,
    subdir: str | None,
    image: str | None,
    version: str | None,
    worker_count: int | None,
    allow_breaking: list[str] | None,
) -> Request:
    """Check the parameters before anything runs."""
    if image is not None:
        parse_image_reference(image)
    workers = env.worker_count if worker_count is None else worker_count
    if workers < 0:
        raise ConfigurationError(f"worker_count must be 0 or more, got {workers}")
    return Request(source, git_ref, subdir, image, version, workers, allow_breaking)


@dataclass(frozen=True)
class Prepared:
    """The rollback point and the pinned image a release would roll out."""

    snapshot: Snapshot
    image: str
    version: str

    def is_running(self, workers: int) -> bool:
        state = self.snapshot.state
        return (
            state.api.image == self.image
            and state.workers.image in (self.image, None)
            and state.workers.replicas == workers
        )


def prepare(env: ReleaseEnvironment, request: Request, timeline: Timeline) -> Prepared:
    """Snapshot what runs while the image is built and pushed (or resolved)."""
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
    return Prepared(snapshot_run.result(), pinned, version)


@flow(name="plan", flow_run_name="plan {environment}")
def plan(
    environment: str,
    source: str = DEFAULT_SOURCE,
    git_ref: str | None = None,
    subdir: str | None = None,
    image: str | None = None,
    version: str | None = None,
    worker_count: int | None = None,
    allow_breaking: list[str] | None = None,
) -> dict:
    """Say what releasing to `environment` would do; change nothing there.

    Args:
        environment: Name of the ReleaseEnvironment block.
        source: Build context: a directory, or a git URL (with `git_ref`).
        git_ref: Branch, tag or commit to build when `source` is a git URL.
        subdir: Directory holding the Dockerfile inside `source`.
        image: Plan the release of this existing image (tag or digest) instead of building.
        version: Version the release would tag and expect on /health.
        worker_count: Workers the release would run (default: the environment's).
        allow_breaking: Pending revision ids whose breaking operations would be accepted.
    """
    env = load_environment(environment)
    request = make_request(
        env, source, git_ref, subdir, image, version, worker_count, allow_breaking
    )
    prepared = prepare(env, request, Timeline())
    check, refused = None, None
    if not prepared.is_running(request.workers):
        try:
            check = check_migrations(
                env, prepared.image, prepared.snapshot.schema_revision, allow_breaking
            )
        except MigrationRefused as exc:
            refused = str(exc)
    result = _describe(env.environment, prepared, request.workers, check, refused)
    create_markdown_artifact(
        key=f"plan-{env.environment}",
        markdown=_markdown(result),
        description=f"What a release to {env.environment} would do",
    )
    get_run_logger().info(result["summary"])
    return result


def _describe(
    environment: str,
    prepared: Prepared,
    workers: int,
    check: MigrationCheck | None,
    refused: str | None,
) -> dict:
    before = prepared.snapshot.state
    schema = prepared.snapshot.schema_revision
    pending = check.pending if check else []
    if prepared.is_running(workers):
        verdict, summary = "nothing to do", f"{prepared.version} already runs in {environment}"
    elif refused:
        verdict, summary = "refused", f"a release of {prepared.version} would be refused"
    else:
        verdict = "safe" if not (check and check.accepted) else "accepted by allow_breaking"
        summary = (
            f"a release would replace API {describe_service(before.api)} with "
            f"{prepared.version}, run {before.workers.replicas} -> {workers} worker(s), and "
            f"migrate {schema or 'base'} -> {pending[-1] if pending else schema or 'base'}"
        )
    return {
        "environment": environment,
        "summary": summary,
        "verdict": verdict,
        "refused": refused,
        "image": {"running": before.api.image, "release": prepared.image},
        "version": {"running": before.api.version, "release": prepared.version},
        "workers": {"running": before.workers.replicas, "release": workers},
        "schema": {"running": schema, "pending": pending},
        "accepted": list(check.accepted) if check else [],
    }


def _markdown(plan: dict) -> str:
    def cell(value) -> str:
        return "-" if value is None else str(value)

    rows = "\n".join(
        f"| {what} | {cell(plan[what]['running'])} | {cell(plan[what]['release'])} |"
        for what in ("version", "image", "workers")
    )
    pending = ", ".join(plan["schema"]["pending"]) or "none"
    notes = "".join(f"\n- {reason}" for reason in plan["accepted"])
    if plan["refused"]:
        notes += f"\n- {plan['refused']}"
    return (
        f"# Plan for {plan['environment']}: {plan['verdict']}\n\n{plan['summary']}\n\n"
        f"| | running | release |\n|---|---|---|\n{rows}\n\n"
        f"Schema at {plan['schema']['running'] or 'base'}; pending revisions: {pending}\n"
        f"{notes}\n"
    )
