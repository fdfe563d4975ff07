"""The plan: what a release would do, without changing the environment.

    snapshot what runs                    (concurrent with the build)
    build and push the image, or resolve the given one
    compare: image, worker count, pending migrations with their safety verdict

It runs the release's own preparation (flows/prepare.py) and migration check, then stops:
no lock, no ledger row, nothing changed. Published as the artifact `plan-<environment>`.
"""

from contextlib import closing

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.environment import connect_target, load_environment
from flows.errors import ReleaseFailed
from flows.prepare import Prepared, ReleaseRequest, documented, prepare
from flows.saga import Steps
from targets.base import describe_service
from tasks.check_migrations import MigrationCheck, MigrationRefused, check_migrations


@flow(name="plan", flow_run_name="plan {environment}")
@documented("Say what releasing to `environment` would do; change nothing there.")
def plan(
    environment: str,
    source: str | None = None,
    git_ref: str | None = None,
    subdir: str | None = None,
    image: str | None = None,
    version: str | None = None,
    worker_count: int | None = None,
    allow_breaking: list[str] | None = None,
) -> dict:
    request = ReleaseRequest.model_validate(locals())  # the parameters as one model
    try:
        env = load_environment(environment)
        workers = request.workers(env)
        with closing(connect_target(env)) as target:
            prepared = prepare(Steps(env, target, []), request)
            check, refused = None, None
            if not prepared.is_running(workers):
                try:
                    check = check_migrations(
                        env,
                        target,
                        prepared.images["migrate"],
                        current=prepared.snapshot.schema_revision,
                        allow_breaking=allow_breaking,
                        first_release=prepared.snapshot.first_release,
                    )
                except MigrationRefused as exc:
                    refused = str(exc)
    except Exception as exc:
        raise ReleaseFailed.refused(f"plan of a release to {environment}", exc) from exc
    result = _describe(env.environment, prepared, workers, check, refused)
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
        "image": {"running": before.api.image, "release": prepared.api},
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
