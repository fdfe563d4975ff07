"""Secret values from Prefect blocks named '<block-type-slug>/<name>': a `Secret`
('secret/...'), or any secret-store block such as prefect-aws's `AwsSecret` or
prefect-gcp's `GcpSecret`. A block that cannot be read is a clear error before anything
changes; a value is never logged. (An SSM parameter ARN is a reference only ECS reads: it is
refused here.)"""

from prefect.blocks.abstract import SecretBlock
from prefect.blocks.core import Block
from prefect.blocks.system import Secret

from targets.errors import ConfigurationError


def secret_value(reference: str, used_for: str) -> str:
    """The value of the secret block `reference`, which `used_for` (e.g. 'variable
    AUTH0_SECRET_KEY') needs."""
    if reference.startswith("arn:"):
        raise ConfigurationError(
            f"{used_for}: {reference!r} is an SSM parameter ARN, which only ECS reads (as a "
            "task-definition secret): on this target name a secret block instead"
        )
    try:
        block = Block.load(reference)
    except ValueError as exc:
        raise ConfigurationError(
            f"the secret block {reference!r} for {used_for} cannot be loaded ({exc}): create "
            "it (e.g. `Secret(value=...).save(NAME)`), or fix the reference "
            "('<block-type-slug>/<name>', e.g. 'secret/rhesis-jwt-secret-key')"
        ) from None
    if isinstance(block, Secret):
        return str(block.get())
    if isinstance(block, SecretBlock):
        try:
            return block.read_secret().decode()
        except Exception as exc:  # noqa: BLE001 - the store's own error, named
            raise ConfigurationError(
                f"the secret block {reference!r} for {used_for} could not be read from its "
                f"store ({type(exc).__name__}: {exc}): check the secret exists and the "
                "block's credentials may read it"
            ) from None
    raise ConfigurationError(
        f"block {reference!r} for {used_for} is a {type(block).__name__}, not a secret: use a "
        "Secret, AwsSecret or GcpSecret block"
    )


def secret_values(references: dict[str, str], what: str) -> dict[str, str]:
    """{name: value} for {name: secret block reference}."""
    return {name: secret_value(ref, f"{what} {name}") for name, ref in references.items()}
