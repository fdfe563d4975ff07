"""Image-push event to flow run started, on the stack tests/test_triggers.py uses: a real
`prefect server start`, `prefect deploy --all`, a process worker polling every second, the
event bridge, and a second registry that notifies it.

Measured from the push to the `release-pushed-image` run's start_time (its first Running
state). "The push" is the earlier of two moments: the bridge receiving the registry's
notification (`received_at`, which the bridge puts in the event and the run gets as a
parameter) and the push call returning to the pusher.
"""

import time
import uuid
from datetime import UTC, datetime

from prefect.blocks.system import Secret
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect_docker import DockerRegistryCredentials

from blocks.environment import ReleaseEnvironment
from targets.registry import login, push_image, registry_auth
from tests.services import free_port
from tests.stack import Stack

DEPLOYMENT = "release-pushed-image/release-pushed-image"
REPOSITORY = "tests/backend"
ENVIRONMENT = "staging"  # the environment the bridge's route maps the pushes to


def route(registry2: str) -> str:
    return f"{registry2}/{REPOSITORY}:main-*={ENVIRONMENT}"


def save_target(lab, registry2: str) -> ReleaseEnvironment:
    """The `staging` block the triggered releases go to (images from the second registry)."""
    env = ReleaseEnvironment(
        environment=f"{lab.prefix}-{ENVIRONMENT}",
        image_repository=f"{registry2}/{REPOSITORY}",
        registry_credentials=DockerRegistryCredentials(
            username=lab.registry.username,
            password=lab.registry.password,
            registry_url=registry2,
        ),
        database_url=Secret(value=lab.pg.url(lab.database())),
        api_port=free_port(),
        worker_count=0,
        health_consecutive=2,
        health_interval_seconds=0.5,
    )
    env.save(ENVIRONMENT, overwrite=True)
    lab.flow_names.append(env.environment)
    return env


def event_to_run(stack: Stack, lab, registry2: str, image: str) -> dict[str, float]:
    """Push `image` under a new routed tag; seconds from the push to the triggered run's
    start, from each of the two moments. Returns once that run has finished."""
    auth = registry_auth(lab.registry.username, lab.registry.password)
    login(lab.engine, registry2, auth)
    tag = f"main-{uuid.uuid4().hex[:8]}"
    reference = f"{registry2}/{REPOSITORY}:{tag}"
    lab.engine.images.get(image).tag(reference)
    lab.images.add(reference)
    push_image(lab.engine, reference, auth, lambda _: None)
    pushed = datetime.now(UTC)
    run = _wait(stack, lambda r: r.parameters.get("tag") == tag and r.start_time, f"run of {tag}")
    received = datetime.fromisoformat(run.parameters["received_at"]).astimezone(UTC)
    done = _wait(stack, lambda r: r.id == run.id and r.state.is_final(), f"end of {tag}'s run")
    if not done.state.is_completed():
        raise RuntimeError(f"the release triggered by {tag} ended {done.state.name}")
    start = min(received, pushed)
    with stack.client() as client:
        states = {s.type.value: s.timestamp for s in client.read_flow_run_states(run.id)}
    return {
        "from_push": (run.start_time - start).total_seconds(),
        "from_bridge": (run.start_time - received).total_seconds(),
        "from_push_returned": (run.start_time - pushed).total_seconds(),
        # Where the time goes: the trigger creates the run (Scheduled), the worker's poll
        # picks it up (Pending), the spawned process loads the flow and starts it (Running).
        "push_to_scheduled": (states["SCHEDULED"] - start).total_seconds(),
        "push_to_pending": (states["PENDING"] - start).total_seconds(),
    }


def _wait(stack: Stack, check, what: str, timeout: float = 180) -> FlowRun:
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
            if match := next((r for r in runs if check(r)), None):
                return match
            time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s waiting for the {what}")
