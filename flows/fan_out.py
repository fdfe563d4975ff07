"""Release one code change to many environments (staging, eu, us, ...): built and pushed
once, then released to all of them at once.

    load and check every environment   (unknown, named twice, or not sharing one image
                                        repository and build spec: refused, nothing changed)
    build and push the image, once     (flows/prepare.py, as a release does)
    release it to each environment     (the `release` flow as a subflow per environment,
                                        all at once, each given the pushed REPOSITORY:TAG)
    report every environment's outcome

Each release is a whole release of its own environment: its own lock, ledger row,
migration check and, if it fails, compensating rollback. Only the check's probe of the
image's revisions is shared: environments at the same revision with the same settings
take the answer of one probe (tasks/check_migrations.py: SharedProbes). One environment
failing does not touch the others. If any failed, the flow raises ReleaseFailed listing
every environment's outcome ('released', 'no-op', 'failed', 'rolled back', 'rollback
failed') and message; otherwise it returns each environment's release summary.

    python -m flows.fan_out SOURCE ENVIRONMENT...
"""

import contextvars
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.environment import ReleaseEnvironment, connect_target, load_environment
from flows.engine import heartbeat_off
from flows.errors import ReleaseFailed
from flows.prepare import ReleaseRequest, build_and_push
from flows.release import release
from flows.saga import Steps
from targets.errors import ConfigurationError
from tasks.check_migrations import shared_probes

# From the least to the most that is left to do after a release failed.
FAILURES = ("failed", "rolled back", "rollback failed")


def _run_name() -> str:
    return f"release to {', '.join(flow_run.parameters['environments']) or 'no environment'}"


@flow(name="release-to-many", flow_run_name=_run_name)
def release_to_many(
    environments: list[str],
    source: str | None = None,
    git_ref: str | None = None,
    subdir: str | None = None,
    version: str | None = None,
    worker_count: int | None = None,
) -> dict[str, dict]:
    """Release one code change to several environments that share an image repository:
    build and push it once, then release it to every environment at once.

    Args:
        environments: Names of the ReleaseEnvironment blocks, e.g. ['staging', 'eu', 'us'].
        source: The code: a directory, or a git URL (with `git_ref`); default: the
            application spec's build source.
        git_ref: Branch, tag or commit to build when `source` is a git URL.
        subdir: Build context inside `source` (default: the application spec's).
        version: Version to tag and expect on /health (default: from the source's files).
        worker_count: Workers to run in each environment (default: each one's own count).
    """
    what = f"release to {', '.join(environments) or 'no environment'}"
    request = ReleaseRequest(
        source=source, git_ref=git_ref, subdir=subdir, version=version, worker_count=worker_count
    )
    try:
        envs = load_all(environments, request)
    except Exception as exc:
        raise ReleaseFailed.refused(what, exc) from exc
    image = build_once(envs[0], request, what)
    results = release_each(environments, image, worker_count)
    if any(isinstance(result, Exception) for result in results.values()):
        raise failure(what, results)
    return results


def load_all(names: list[str], request: ReleaseRequest) -> list[ReleaseEnvironment]:
    """Every environment, checked before anything changes: each must exist, be named once
    and accept the worker count, and all must build the same image (the same image
    repository and build spec), since it is built once for all of them."""
    if not names:
        raise ConfigurationError("no environment given: name at least one, e.g. ['staging']")
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigurationError(f"{', '.join(twice)} named more than once: name each once")
    envs, problems = [], []
    for name in names:
        try:
            env = load_environment(name)
            request.workers(env)
            envs.append(env)
        except ConfigurationError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigurationError("; ".join(problems))
    builds = {(env.image_repository, env.application.build.model_dump_json()) for env in envs}
    if len(builds) > 1:
        pushes = "; ".join(f"{env.environment} -> {env.image_repository}" for env in envs)
        raise ConfigurationError(
            "the image is built once for all of them, but they do not share one image "
            f"repository and application build spec ({pushes}): release to many only "
            "environments that do, and release the others separately"
        )
    return envs


def build_once(env: ReleaseEnvironment, request: ReleaseRequest, what: str) -> str:
    """Build and push the change once, as a release of `env` would; the API image as
    REPOSITORY:TAG, from which each release finds every role's image."""
    steps = []
    try:
        with closing(connect_target(env)) as target:
            images, version = build_and_push(Steps(env, target, steps), request)
    except Exception as exc:
        step = next((s.name for s in steps if s.outcome == "failed"), None)
        raise ReleaseFailed.refused(what, exc, step) from exc
    image = f"{env.image_repository}:{version}"
    get_run_logger().info(f"built and pushed {image} ({images['api']}) once")
    return image


def release_each(names: list[str], image: str, worker_count: int | None) -> dict:
    """Release `image` to every environment at once, each as a subflow of this run in a
    thread of its own: environment -> its summary, or the error its release raised."""
    logger = get_run_logger()

    def release_one(name: str) -> dict | Exception:
        logger.info(f"{name}: releasing {image}")
        try:
            summary = release(name, image=image, worker_count=worker_count)
        except Exception as exc:  # noqa: BLE001 - reported with the others' outcomes
            logger.error(f"{name}: {outcome(exc)}")
            return exc
        logger.info(f"{name}: {outcome(summary)}")
        return summary

    # Each thread runs in a copy of this run's context, so its release is a subflow of this
    # run; a subflow needs no heartbeat of its own (flows/engine.py); the releases' migration
    # checks probe the image once for all environments at the same revision.
    with (
        heartbeat_off(),
        shared_probes(),
        ThreadPoolExecutor(len(names), thread_name_prefix="release") as pool,
    ):
        futures = {
            name: pool.submit(contextvars.copy_context().run, release_one, name) for name in names
        }
    return {name: future.result() for name, future in futures.items()}


def failure(what: str, results: dict) -> ReleaseFailed:
    """The error of a fan-out in which some releases failed: every environment's outcome,
    the worst one as its own."""
    failed = {name: r for name, r in results.items() if isinstance(r, Exception)}
    outcomes = "\n".join(f"- {name}: {outcome(r)}" for name, r in results.items())
    return ReleaseFailed(
        f"{what} failed in {len(failed)} of {len(results)} environment(s) "
        f"({', '.join(failed)}); each environment's outcome:\n{outcomes}",
        cause=next(iter(failed.values())),
        changed=any(changed(r) for r in results.values()),
        outcome=max((getattr(r, "outcome", "failed") for r in failed.values()), key=FAILURES.index),
    )


def outcome(result: dict | Exception) -> str:
    """'<outcome>: <message>' of one environment's release."""
    if isinstance(result, Exception):
        return f"{getattr(result, 'outcome', 'failed')}: {result}"
    return f"{result['outcome']}: {result['message']}"


def changed(result: dict | Exception) -> bool:
    if isinstance(result, Exception):
        return getattr(result, "changed", True)
    return result["outcome"] != "no-op"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m flows.fan_out SOURCE ENVIRONMENT...")
    release_to_many(sys.argv[2:], source=sys.argv[1])
