"""The three ways a release starts, each a small flow that runs the `release` subflow while
holding the environment's release slot (`release-<environment>`, a global concurrency
limit of 1), so two releases of one environment never overlap, whatever started them:

    nightly_staging       the nightly schedule: the configured branch of the source
    release_from_ui       the form in the Prefect UI: typed, validated parameters
    release_pushed_image  an image-push event from the event bridge: exactly that digest

`on_busy` says what a release does when another one holds the slot: "wait" for it, or
"cancel" itself (the run ends Cancelled, saying why).
"""

from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Annotated, Literal

import httpx
from prefect import flow, get_run_logger
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.states import Cancelled, State
from pydantic import MISSING, Field

from deployments.environments import Environment, EnvironmentName, release_slot
from flows.engine import heartbeat_off
from flows.errors import ReleaseFailed
from flows.release import release
from targets.errors import ConfigurationError

OnBusy = Literal["wait", "cancel"]
# Shape checks the server enforces before a run exists; `release` parses fully. A form's
# optional text is a plain input whose empty value means "not given": `str | None` would
# render as a type switch in the UI ("Property is type None").
ImageReference = Annotated[
    str,
    Field(
        max_length=512,
        pattern=r"^$|^[a-z0-9][A-Za-z0-9_.:/-]*(@sha256:[a-f0-9]{64})?$",
        examples=["127.0.0.1:5000/rhesis/backend:v2", "rhesis/backend@sha256:<64 hex>"],
    ),
]
GitRef = Annotated[str, Field(max_length=255, pattern=r"^$|^[A-Za-z0-9_][A-Za-z0-9_./-]*$")]
Subdir = Annotated[str, Field(max_length=255, pattern=r"^$|^[A-Za-z0-9_][A-Za-z0-9_./-]*$")]
Version = Annotated[str, Field(max_length=128, pattern=r"^$|^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
# A number left empty is not sent: its default is MISSING, which the schema leaves out (a
# `None` default would be sent as null, which the server refuses for an integer).
WorkerCount = Annotated[int, Field(ge=0, le=100)]
Digest = Annotated[str, Field(pattern=r"^sha256:[a-f0-9]{64}$")]
RevisionId = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


@flow(name="nightly-staging", flow_run_name="nightly {environment}")
def nightly_staging(
    environment: EnvironmentName = "staging",
    source: str = "",
    branch: GitRef = "",
    subdir: Subdir = "",
    on_busy: OnBusy = "cancel",
) -> dict | State:
    """Release the configured branch of the source (nightly schedule).

    Args:
        environment: Environment to release to (a Release Environment block; configured in
            prefect.yaml, so `prefect deploy` works before that block exists).
        source: The code: a directory, or a git URL (then `branch` is checked out); empty:
            the application spec's build source.
        branch: Branch to build when `source` is a git URL (empty: its default branch).
        subdir: Build context inside the source, e.g. 'backend' (empty: the application
            spec's).
        on_busy: When another release of the environment is in flight: wait, or cancel this one.
    """
    return _exclusive_release(
        environment,
        on_busy,
        source=source or None,
        git_ref=branch or None,
        subdir=subdir or None,
    )


@flow(name="release-from-ui", flow_run_name="release {environment} (ui)")
def release_from_ui(
    environment: Environment,
    image: ImageReference = "",
    source: str = "",
    git_ref: GitRef = "",
    subdir: Subdir = "",
    version: Version = "",
    worker_count: WorkerCount | MISSING = MISSING,
    dry_run: bool = False,
    allow_breaking: tuple[RevisionId, ...] = (),
    on_busy: OnBusy = "wait",
) -> dict | State:
    """Release to an environment from the Prefect UI form.

    Args:
        environment: Environment to release to.
        image: Release this already pushed image (tag or sha256 digest) instead of building
            (empty: build `source`).
        source: The code: a directory, or a git URL (empty: the application spec's build
            source; not used with `image`).
        git_ref: Branch, tag or commit to build when `source` is a git URL (not with `image`).
        subdir: Build context inside the source, e.g. 'backend' (empty: the application
            spec's).
        version: Version to tag and expect on /health (empty: derived from the source).
        worker_count: Workers to run, 0-100 (empty: the environment's worker count).
        dry_run: Build, push and report the plan; change nothing in the environment.
        allow_breaking: Alembic revision ids whose breaking or irreversible operations you
            accept (the release refuses them otherwise, naming them).
        on_busy: When another release of the environment is in flight: wait, or cancel this one.
    """
    if image and git_ref:
        both = ConfigurationError(
            "give either `image` (release an existing image) or `git_ref` (build it), not both"
        )
        raise ReleaseFailed.refused(f"release to {environment}", both)
    return _exclusive_release(
        environment,
        on_busy,
        source=source or None,
        git_ref=git_ref or None,
        subdir=subdir or None,
        image=image or None,
        version=version or None,
        worker_count=None if worker_count is MISSING else worker_count,
        dry_run=dry_run,
        allow_breaking=list(allow_breaking) or None,
    )


@flow(name="release-pushed-image", flow_run_name="release {repository}:{tag} to {environment}")
def release_pushed_image(
    repository: str,
    tag: str,
    digest: Digest,
    environment: EnvironmentName,
    received_at: datetime,
    on_busy: OnBusy = "wait",
) -> dict | State:
    """Release exactly the pushed digest (started by the image-push trigger).

    Args:
        repository: Registry and repository of the pushed image.
        tag: Tag the image was pushed with.
        digest: Digest the registry reported for the push.
        environment: Environment the bridge mapped the repository and tag to (a Release
            Environment block: the bridge checks it, `release` names a missing one).
        received_at: When the event bridge received the push notification.
        on_busy: When another release of the environment is in flight: wait, or cancel this one.
    """
    latency = (datetime.now(UTC) - received_at.astimezone(UTC)).total_seconds()
    get_run_logger().info(f"push of {repository}:{tag} -> flow run started in {latency:.2f} s")
    return _exclusive_release(environment, on_busy, image=f"{repository}:{tag}@{digest}")


def _exclusive_release(environment: str, on_busy: OnBusy, **release_args) -> dict | State:
    """Run the release subflow while holding the environment's release slot. Raises
    ReleaseFailed (flows/errors.py), as the release does, if the slot cannot be taken."""
    slot = release_slot(environment)
    get_run_logger().info(f"taking the release slot {slot} (when busy: {on_busy})")
    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(
                    slot,
                    strict=True,
                    max_retries=0 if on_busy == "cancel" else None,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except ConcurrencySlotAcquisitionError as exc:
            if _slot_taken(exc):
                return Cancelled(
                    message=f"another release of {environment} is in flight: this one is "
                    "cancelled (on_busy=cancel)"
                )
            cause = ConfigurationError(
                f"cannot take the release slot {slot!r} ({exc}): create it with "
                "`python -m deployments.setup`"
            )
            raise ReleaseFailed.refused(f"release to {environment}", cause) from exc
        except Exception as exc:
            raise ReleaseFailed.refused(f"release to {environment}", exc) from exc
        with heartbeat_off():  # a subflow: its parent's heartbeat, if any, covers it
            return release(environment=environment, **release_args)


def _slot_taken(exc: ConcurrencySlotAcquisitionError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423
