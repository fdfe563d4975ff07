"""What a release is asked to do, and its preparation: what `release` and `plan` both do
before anything changes.

    snapshot what runs                    (the rollback point; concurrent with the build)
    build and push the image, or resolve the given one
"""

from pydantic import BaseModel

from blocks.application import ROLES, Build
from blocks.environment import ReleaseEnvironment, push_credentials
from flows.saga import Steps
from ledger.record import Snapshot
from targets.build import stage_tag
from targets.errors import ConfigurationError
from targets.images import parse_image_reference
from tasks.build import build
from tasks.push import confirm_pushed, push, resolve
from tasks.snapshot import take_snapshot


class ReleaseRequest(BaseModel):
    """What the caller asked for: build `source` (a directory, or a git URL at `git_ref`;
    default: the application spec's) or release the existing `image`; `version` to tag and
    expect; `worker_count` workers (default: the environment's); revisions in
    `allow_breaking` accepted."""

    source: str | None = None
    git_ref: str | None = None
    subdir: str | None = None
    image: str | None = None
    version: str | None = None
    worker_count: int | None = None
    allow_breaking: list[str] | None = None

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


class Prepared(BaseModel):
    """The rollback point and the pinned images a release would roll out."""

    snapshot: Snapshot
    images: dict[str, str]  # role (api, worker, migrate) -> pinned reference
    version: str

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


def prepare(run: Steps, request: ReleaseRequest) -> Prepared:
    """Snapshot what runs while the images are built and pushed (or resolved)."""
    env, spec = run.env, run.env.application.build
    credentials = push_credentials(env)
    snapshot = run.submit("snapshot", take_snapshot, env, run.target)
    if request.image is None:
        built = run.step(
            "build",
            build,
            spec,
            env.image_repository,
            source=request.source,
            ref=request.git_ref,
            context=request.subdir,
            version=request.version,
            docker_host=env.docker_host,
        )
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
        images = {role: pinned[b.reference] for role, b in built.items()}
        version = built["api"].version
    else:
        references = role_references(request.image, spec)
        resolved = {
            reference: run.step("resolve-image", resolve, reference, credentials, env.docker_host)
            for reference in dict.fromkeys(references.values())
        }
        images = {role: resolved[reference][0] for role, reference in references.items()}
        version = resolved[references["api"]][1]
    return Prepared(snapshot=snapshot.result(), images=images, version=version)


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
