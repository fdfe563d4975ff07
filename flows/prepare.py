"""What a release is asked to do, and its preparation: what `release` and `plan` both do
before anything changes.

    snapshot what runs                    (the rollback point; concurrent with the build)
    build and push the image, or resolve the given one
"""

from pydantic import BaseModel

from blocks.environment import ReleaseEnvironment, push_credentials
from flows.saga import Steps
from ledger.record import Snapshot
from targets.errors import ConfigurationError
from targets.images import parse_image_reference
from tasks.build import build
from tasks.push import confirm_pushed, push, resolve
from tasks.snapshot import take_snapshot

DEFAULT_SOURCE = "examples/backend"


class ReleaseRequest(BaseModel):
    """What the caller asked for: build `source` (a directory, or a git URL at `git_ref`)
    or release the existing `image`; `version` to tag and expect; `worker_count` workers
    (default: the environment's); revisions in `allow_breaking` accepted."""

    source: str = DEFAULT_SOURCE
    git_ref: str | None = None
    subdir: str | None = None
    image: str | None = None
    version: str | None = None
    worker_count: int | None = None
    allow_breaking: list[str] | None = None

    def describe(self) -> str:
        """The source as the ledger shows it."""
        return self.image or " ".join(filter(None, (self.source, self.git_ref)))

    def workers(self, env: ReleaseEnvironment) -> int:
        """The worker count, checked against the environment (bad input fails here)."""
        if self.image is not None:
            parse_image_reference(self.image)
        workers = env.worker_count if self.worker_count is None else self.worker_count
        if workers < 0:
            raise ConfigurationError(f"worker_count must be 0 or more, got {workers}")
        return workers


class Prepared(BaseModel):
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


def prepare(run: Steps, request: ReleaseRequest) -> Prepared:
    """Snapshot what runs while the image is built and pushed (or resolved)."""
    env = run.env
    credentials = push_credentials(env)
    snapshot = run.submit("snapshot", take_snapshot, env, run.target)
    if request.image is None:
        built = run.step(
            "build",
            build,
            request.source,
            env.image_repository,
            version=request.version,
            git_ref=request.git_ref,
            subdir=request.subdir,
            docker_host=env.docker_host,
        )
        pinned = run.step("push", push, built.reference, credentials, env.docker_host)
        run.step("confirm-push", confirm_pushed, env, pinned)
        version = built.version
    else:
        pinned, version = run.step(
            "resolve-image", resolve, request.image, credentials, env.docker_host
        )
    return Prepared(snapshot=snapshot.result(), image=pinned, version=version)
