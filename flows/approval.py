"""Approval before a release's first change, for environments that require one.

The release pauses and waits for an `Approval` (who approves, an optional comment): resume
the paused flow run in the Prefect UI, which shows the form, or with
`prefect.flow_runs.resume_flow_run(id, run_input={"approved_by": "..."})`. Without an
approval in time, the release ends having changed nothing, and says so.
"""

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from blocks.environment import ReleaseEnvironment
from targets.errors import ReleaseError

POLL_SECONDS = 2


class Approval(RunInput):
    """The form the paused release shows in the UI (plain inputs: no `str | None`)."""

    approved_by: str = Field(min_length=1, max_length=200, description="Who approves this release.")
    comment: str = Field(default="", max_length=2000, description="Why, or anything to note.")


class NotApproved(ReleaseError):
    """Nobody approved the release in time; nothing was changed."""


def approve(env: ReleaseEnvironment, version: str, image: str) -> str | None:
    """Return, once the release is approved, who approved it (and why); None at once where
    no approval is required."""
    if not env.require_approval:
        return None
    logger = get_run_logger()
    timeout = int(env.approval_timeout_seconds)
    logger.info(
        f"{env.environment} requires an approval: waiting up to {timeout} s for someone to "
        f"resume this flow run with who approves releasing {version}"
    )
    request = Approval.with_initial_data(
        description=f"Approve releasing {version} (`{image}`) to **{env.environment}**?"
    )
    try:
        approval = pause_flow_run(
            wait_for_input=request, timeout=timeout, poll_interval=POLL_SECONDS
        )
    except FlowPauseTimeout:
        raise NotApproved(
            f"nobody approved releasing {version} to {env.environment} within {timeout} s"
        ) from None
    approver = approval.approved_by + (f" ({approval.comment})" if approval.comment else "")
    logger.info(f"releasing {version} to {env.environment}: approved by {approver}")
    return approver
