"""What a release is asked to do, and its preparation: what `release` and `plan` both do
before anything changes.

    snapshot what runs                    (the rollback point; concurrent with the build)
    build and push the image, or resolve the given one
      (a release on a Docker host starts its migration check on the built image here,
       while the image is pushed)
"""

import textwrap
from collections.abc import Callable
from typing import TypeVar

from prefect_docker import DockerRegistryCredentials
from pydantic import BaseModel, ConfigDict, Field

from blocks.application import ROLES, Build
from blocks.environment import ReleaseEnvironment, push_credentials
from flows.saga import StepRun, Steps
from ledger.record import Snapshot
from targets.build import BuiltImage, stage_tag
from targets.errors import ConfigurationError
from targets.images import parse_image_reference
from tasks.build import build
from tasks.push import confirm_pushed, push, resolve
from tasks.snapshot import take_snapshot

F = TypeVar("F", bound=Callable)


class ReleaseRequest(BaseModel):
    """What the caller asked for: the parameters `release` and `plan` share, described
    once here (their docstrings are written from these descriptions by `documented`)."""

    source: str | None = Field(
        None,
        description="The code: a directory, or a git URL (with `git_ref`); default: the "
        "application spec's build source.",
    )
    git_ref: str | None = Field(
        None, description="Branch, tag or commit to build when `source` is a git URL."
    )
    subdir: str | None = Field(
        None, description="Build context inside `source` (default: the application spec's)."
    )
    image: str | None = Field(
        None, description="Release this existing image (tag or digest) instead of building."
    )
    version: str | None = Field(
        None, description="Version to tag and expect on /health (default: from the source's files)."
    )
    worker_count: int | None = Field(
        None, description="Workers to run (default: the environment's worker count)."
    )
    allow_breaking: list[str] | None = Field(
        None,
        description="Pending revision ids whose breaking or irreversible operations are "
        "accepted (otherwise the release refuses them before any change).",
    )

    def describe(self, spec: Build) -> str:
        """The source as the ledger shows it."""
        source, ref = self.source or spec.source, self.git_ref or spec.ref
        return self.image or " ".join(filter(None, (source, ref)))

    def workers(self, env: ReleaseEnvironment) -> int:
        """The worker count, checked against the environment (bad input fails here)."""
        if self.image is not None:
            parse_image_reference(self.image)
        workers = env.worker_count if self.worker_count is None else self.worker_count
        if workers < 0:
            raise ConfigurationError(f"worker_count must be 0 or more, got {workers}")
        return workers


def documented(summary: str, **more: str) -> Callable[[F], F]:
    """Give a flow function the docstring `summary` plus an Args section: `environment`,
    the ReleaseRequest fields, then `more` (Prefect shows them on the flow's form)."""
    fields = {name: field.description for name, field in ReleaseRequest.model_fields.items()}
    args = {"environment": "Name of the ReleaseEnvironment block.", **fields, **more}
    lines = [
        textwrap.fill(f"{name}: {text}", 88, initial_indent="    ", subsequent_indent="        ")
        for name, text in args.items()
    ]

    def document(fn: F) -> F:
        fn.__doc__ = "\n".join([summary, "", "Args:", *lines])
        return fn

    return document


# Starts the migration check of a just-built image: (the rollback point, the image id of
# the migrate role) -> the running step.
CheckBuilt = Callable[[Snapshot, str], StepRun]


class Prepared(BaseModel):
    """The rollback point and the pinned images a release would roll out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    snapshot: Snapshot
    images: dict[str, str]  # role (api, worker, migrate) -> pinned reference
    version: str
    check: StepRun | None = None  # the migration check, when started before the push

    @property
    def api(self) -> str:
        return self.images["api"]

    def is_running(self, workers: int) -> bool:
        state = self.snapshot.state
        return (
            state.api.image == self.images["api"]
            and state.workers.image in (self.images["worker"], None)
            and state.workers.replicas == workers
        )


def prepare(run: Steps, request: ReleaseRequest, check_built: CheckBuilt | None = None) -> Prepared:
    """Snapshot what runs while the images are built and pushed (or resolved). Where the
    target runs one-offs on the engine that built the images, `check_built` starts the
    migration check on them as soon as they are built, while they are pushed."""
    snapshot = run.submit("snapshot", take_snapshot, run.env, run.target)
    if request.image is not None:
        credentials = push_credentials(run.env)
        references = role_references(request.image, run.env.application.build)
        resolved = resolve_images(run, references, credentials)
        images = {role: pinned for role, (pinned, _) in resolved.items()}
        return Prepared(snapshot=snapshot.result(), images=images, version=resolved["api"][1])
    built = build_images(run, request)
    check = None
    built_ids = {role: image.image_id for role, image in built.items()}
    if check_built is not None and run.target.checks_before_push(built_ids):
        check = check_built(snapshot.result(), built_ids["migrate"])
    try:
        images = push_images(run, request, built)
    except BaseException:
        if check is not None:
            check.wait()  # no step is left running when the release ends
        raise
    version = built["api"].version
    return Prepared(snapshot=snapshot.result(), images=images, version=version, check=check)


def build_and_push(run: Steps, request: ReleaseRequest) -> tuple[dict[str, str], str]:
    """Build the requested source's images and push them: the pinned image of each role,
    and the version they were built as."""
    built = build_images(run, request)
    return push_images(run, request, built), built["api"].version


def build_images(run: Steps, request: ReleaseRequest) -> dict[str, BuiltImage]:
    """The build step: the requested source's image of each role."""
    env = run.env
    return run.step(
        "build",
        build,
        env.application.build,
        env.image_repository,
        source=request.source,
        ref=request.git_ref,
        context=request.subdir,
        version=request.version,
        docker_host=env.docker_host,
    )


def push_images(
    run: Steps, request: ReleaseRequest, built: dict[str, BuiltImage]
) -> dict[str, str]:
    """Push each distinct built image and confirm it: the pinned image of each role."""
    env, spec = run.env, run.env.application.build
    credentials = push_credentials(env)
    pinned = {}
    for image in {b.reference: b for b in built.values()}.values():
        suffix = "" if image.stage == spec.stage("api") else f"-{image.stage or 'final'}"
        pinned[image.reference] = run.step(
            f"push{suffix}",
            push,
            image.reference,
            credentials,
            env.docker_host,
            same_sources=request.version is None,
        )
        run.step(f"confirm-push{suffix}", confirm_pushed, env, pinned[image.reference])
    return {role: pinned[b.reference] for role, b in built.items()}


def resolve_images(
    run: Steps, references: dict[str, str], credentials: DockerRegistryCredentials | None
) -> dict[str, tuple[str, str]]:
    """Each role's existing image resolved (one step per distinct reference) to its pinned
    digest reference and the version its labels carry."""
    resolved = {
        reference: run.step("resolve-image", resolve, reference, credentials, run.env.docker_host)
        for reference in dict.fromkeys(references.values())
    }
    return {role: resolved[reference] for role, reference in references.items()}


def role_references(image: str, spec: Build) -> dict[str, str]:
    """The image of each role when releasing the existing `image`: itself, or for a role
    built from another stage, the same tag with `-<stage>` (as a build pushes them)."""
    stages = {role: spec.stage(role) for role in ROLES}
    if len(set(stages.values())) == 1:
        return dict.fromkeys(ROLES, image)
    ref = parse_image_reference(image)
    if ref.tag is None:
        raise ConfigurationError(
            f"{image} names no tag, but the roles are built from different stages "
            f"({stages}): give the API image as REPOSITORY:TAG, so the other roles' images "
            "REPOSITORY:TAG-<stage> can be found"
        )
    references = {}
    for role, stage in stages.items():
        same_as_api = stage == stages["api"]
        references[role] = (
            image if same_as_api else str(ref.with_tag(stage_tag(ref.tag, stage, stages["api"])))
        )
    return references
