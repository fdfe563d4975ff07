"""The environment's notification block: checked before a change starts, told how each
one ended (with the flow-run link). A lost notification never changes an outcome."""

from prefect import get_run_logger
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block

from blocks.environment import ReleaseEnvironment
from ledger.record import ReleaseRecord
from targets.errors import ConfigurationError


def notifier(env: ReleaseEnvironment) -> NotificationBlock | None:
    """The environment's notification block, or a clear error naming the fix."""
    if not env.notification_block:
        return None
    try:
        block = Block.load(env.notification_block)
    except ValueError as exc:
        raise ConfigurationError(
            f"notification block {env.notification_block!r} of environment "
            f"{env.environment!r} cannot be loaded ({exc}): create it, or fix the "
            "environment's notification_block ('<block-type-slug>/<name>')"
        ) from None
    if not isinstance(block, NotificationBlock):
        raise ConfigurationError(
            f"block {env.notification_block!r} is a {type(block).__name__}, not a notification "
            "block (e.g. custom-webhook, slack-webhook, ms-teams-webhook)"
        )
    return block


def notify(env: ReleaseEnvironment, record: ReleaseRecord) -> None:
    try:
        block = notifier(env)
        if block is not None:
            subject = f"{env.environment}: {record.outcome}"
            block.notify(f"{record.message}\n{record.flow_run_url}", subject)
    except Exception as exc:  # noqa: BLE001 - a lost notification must not fail the release
        get_run_logger().warning(f"notification through {env.notification_block!r} failed: {exc}")
