"""The target interface: what a platform adapter reads and changes.

Adapters are Prefect-free so they can be tested on their own. Facts (`read_state`,
`workers_alive`) never change anything; operations (`deploy_api`, `scale_workers`, ...)
change one thing each, and `restore_*` put back a state that `read_state` recorded.
"""

from dataclasses import dataclass, field
from typing import Protocol

# How the backend image starts one Celery worker, unless the application spec says
# otherwise (the seed's command, with its module).
DEFAULT_WORKER_COMMAND = ("celery", "-A", "app.worker", "worker", "--loglevel=info")


@dataclass(frozen=True)
class Processes:
    """How the application's processes start: the application spec, as targets need it."""

    api_command: tuple[str, ...] | None = None  # None: the image's own CMD
    api_port: int = 8000  # where the API listens in its container
    port_variable: str | None = "PORT"  # tells the API which port to listen on
    worker_command: tuple[str, ...] = DEFAULT_WORKER_COMMAND


@dataclass(frozen=True)
class ServiceState:
    """One service (API or workers) as read back from the platform."""

    image: str | None = None  # pinned reference (repo@sha256:...); None: not deployed
    version: str | None = None
    replicas: int = 0
    # Platform handle of what runs (container id, Cloud Run revision, task-definition ARN).
    revision: str | None = None


@dataclass(frozen=True)
class TargetState:
    api: ServiceState = field(default_factory=ServiceState)
    workers: ServiceState = field(default_factory=ServiceState)


def describe_service(state: ServiceState) -> str:
    if state.image is None or state.replicas == 0:
        return "nothing running"
    return f"{state.replicas} x {state.version} ({state.image})"


@dataclass(frozen=True)
class OneOffResult:
    exit_code: int
    output: str


@dataclass(frozen=True)
class WorkerHealth:
    expected: int
    ready: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.ready >= self.expected


class Target(Protocol):
    """One platform (Docker host, Cloud Run, ECS) behind the same small surface."""

    def check(self) -> None:
        """Preflight: the platform answers and the credentials work. Changes nothing."""

    def read_state(self) -> TargetState:
        """What runs now, read from the platform itself (labels, revisions)."""

    def deploy_api(self, image: str, version: str) -> None:
        """Start `image` as the API candidate; the previous version stays restorable."""

    def candidate_url(self) -> str:
        """Base URL where the candidate API answers (before it takes user traffic)."""

    def service_url(self) -> str:
        """Base URL where users reach the API (what a rollback verifies)."""

    def api_runs(self, image: str) -> str:
        """How the platform shows that the API (candidate or serving) runs `image`, for an
        application whose health answer shows no version; StepFailed if it does not."""

    def promote_api(self) -> None:
        """The verified candidate takes all traffic; the previous version is retired."""

    def scale_workers(self, image: str, version: str, count: int) -> None:
        """Run exactly `count` workers of `image`."""

    def workers_alive(self, image: str, count: int) -> WorkerHealth:
        """How many workers of `image` run and are ready to take tasks."""

    def run_oneoff(
        self, image: str, command: list[str], env: dict[str, str], timeout: float
    ) -> OneOffResult:
        """Run `command` once in `image` (e.g. migrations) and wait for its exit."""

    def checks_before_push(self, built: dict[str, str]) -> bool:
        """Whether one-offs can run the images just built (role -> image id) before they are
        pushed, because they run on the engine that built them, and the API does not run
        them already (a re-release of what runs checks nothing). Changes nothing."""

    def restore_api(self, state: ServiceState) -> None:
        """Put the API back to a recorded state (no rebuild)."""

    def restore_workers(self, state: ServiceState) -> None:
        """Put the workers back to a recorded image and count."""

    def close(self) -> None:
        """Release the platform clients (connections, sockets)."""
