"""ECS settings block: which cluster and services a release environment deploys to, how a
rollout is judged, and the AwsCredentials block (region, keys, optional endpoint) to reach
ECS and ECR with. Also the ECR side of a push: registry login from an ECR authorization token,
and the pushed digest confirmed with `describe_images`.
"""

import base64
import re
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from prefect_aws.secrets_manager import AwsSecret
from prefect_docker import DockerRegistryCredentials
from pydantic import Field

from targets.base import Processes
from targets.ecs import DEFAULT_VERSION_LABEL, EcsTarget, RolloutPolicy, classify_aws_error
from targets.errors import ConfigurationError, StepFailed
from targets.images import parse_image_reference

# An SSM parameter, as a secret variable's reference: ECS reads it as a task-definition secret.
SSM_ARN = re.compile(r"^arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.\-/]+$")


class EcsSettings(Block):
    """Where an ECS release goes (cluster, services, container) and how its rollout is judged."""

    _block_type_name = "ECS Settings"
    _block_type_slug = "ecs-settings"
    _description = (
        "AWS ECS target of a release environment: credentials, cluster, API and worker "
        "services, the container whose image a release replaces, and rollout limits."
    )

    aws_credentials: AwsCredentials = Field(
        description="AWS credentials block: keys, region, and (optionally) a custom endpoint "
        "under aws_client_parameters.endpoint_url."
    )
    cluster: str = Field(description="ECS cluster name or ARN.")
    api_service: str = Field(description="ECS service running the API.")
    worker_service: str = Field(description="ECS service running the Celery workers.")
    container_name: str = Field(
        description="Name of the container, in both services' task definitions, whose image "
        "a release replaces."
    )
    api_url: str = Field(
        description="Base URL where the API answers (the load balancer's URL), used to verify."
    )
    version_label: str = Field(
        default=DEFAULT_VERSION_LABEL,
        description="Docker label on the container definition that records the released version.",
    )
    rollout_deadline_seconds: float = Field(
        default=600, gt=0, description="Deadline for a service rollout (Argo Rollouts: 600 s)."
    )
    rollout_poll_seconds: float = Field(
        default=5, gt=0, description="How often the rollout is polled."
    )
    failed_tasks_threshold: int | None = Field(
        default=None,
        ge=1,
        description="Stopped tasks of a new deployment that fail its rollout. Empty: ECS's "
        "circuit-breaker rule (half the desired count, at least 3, at most 200), left to ECS "
        "itself when the service enables its deployment circuit breaker.",
    )


def connect(
    settings: EcsSettings,
    environment_name: str,
    container_env: dict[str, str],
    plain_env: dict[str, str] | None = None,
    processes: Processes | None = None,
    secrets: dict[str, str] | None = None,
):
    """The ECS adapter for an environment. `container_env` (plain variables and the database
    URL) only fills gaps in one-off tasks' environment. `plain_env` (the env file and `env`,
    never secrets) is set in the services' revisions a release registers, and `processes`
    gives their commands (the API's only when the application spec sets one); the task
    definitions keep everything else: their secrets, ports, health check and logging.
    `secrets` (name -> ARN, from `secret_references`) become `secrets` references of every
    revision a release registers."""
    creds = settings.aws_credentials
    return EcsTarget(
        _client(creds, "ecs"),
        cluster=settings.cluster,
        api_service=settings.api_service,
        worker_service=settings.worker_service,
        container_name=settings.container_name,
        api_url=settings.api_url,
        version_label=settings.version_label,
        rollout=RolloutPolicy(
            deadline_seconds=settings.rollout_deadline_seconds,
            poll_seconds=settings.rollout_poll_seconds,
            failed_tasks_threshold=settings.failed_tasks_threshold,
        ),
        logs=_client(creds, "logs"),
        oneoff_env={**container_env, "APP_ENVIRONMENT": environment_name},
        env=plain_env,
        secrets=secrets,
        api_command=processes.api_command if processes else None,
        worker_command=processes.worker_command if processes else None,
    )


def secret_references(settings: EcsSettings, references: dict[str, str]) -> dict[str, str]:
    """The ARN ECS reads each secret variable from ({name: ARN}), for {name: reference}: an
    AwsSecret block ('aws-secret/<block>') names a Secrets Manager secret, whose ARN its own
    credentials look up (`describe_secret`), pinned to its current version; an SSM
    parameter ARN is taken as it is, once the settings' credentials find the parameter
    (`describe_parameters`). A secret that is missing, scheduled for deletion, without a
    current value or not readable with the credentials is a ConfigurationError before any
    change; a plain `Secret` block is refused before any block is read (its value would sit
    in the task definition). No value is ever read."""
    plain = sorted(n for n, ref in references.items() if ref.split("/", 1)[0] == "secret")
    if plain:
        raise ConfigurationError(
            f"{', '.join(plain)}: a plain Secret block cannot feed an ECS secret variable (its "
            "value would be stored in the task definitions, readable by anyone who may "
            "describe them): store the value in AWS Secrets Manager, save an AwsSecret block "
            "naming it (prefect-aws: AwsSecret(aws_credentials=..., secret_name=...)) and "
            "reference that block as 'aws-secret/<block name>'"
        )
    return {
        name: _ssm_arn(settings, name, ref) if SSM_ARN.match(ref) else _secret_arn(name, ref)
        for name, ref in references.items()
    }


def _ssm_arn(settings: EcsSettings, name: str, arn: str) -> str:
    parameter = arn.split(":parameter", 1)[1]
    parameter = parameter if parameter.count("/") > 1 else parameter[1:]  # 'parameter/x': 'x'
    client = _client(settings.aws_credentials, "ssm")
    try:
        found = client.describe_parameters(
            ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [parameter]}]
        )["Parameters"]
    except (BotoCoreError, ClientError) as exc:
        raise classify_aws_error(exc, f"secret variable {name}: describe SSM parameter") from None
    finally:
        client.close()
    if not found:
        raise ConfigurationError(
            f"secret variable {name}: the SSM parameter {parameter!r} ({arn}) does not exist "
            "for the ECS settings' credentials: create it (aws ssm put-parameter --type "
            "SecureString) or fix the ARN"
        )
    return arn


def _secret_arn(name: str, reference: str) -> str:
    try:
        block = Block.load(reference)
    except ValueError as exc:
        raise ConfigurationError(
            f"the secret block {reference!r} for secret variable {name} cannot be loaded "
            f"({exc}): save an AwsSecret block under that name, or fix the reference "
            "('aws-secret/<block name>')"
        ) from None
    if not isinstance(block, AwsSecret):
        raise ConfigurationError(
            f"block {reference!r} for secret variable {name} is a {type(block).__name__}: an "
            "ECS secret variable needs an AwsSecret block naming a Secrets Manager secret"
        )
    what = f"secret variable {name}: describe Secrets Manager secret {block.secret_name!r}"
    client = _client(block.aws_credentials, "secretsmanager")
    try:
        secret = client.describe_secret(SecretId=block.secret_name)
    except client.exceptions.ResourceNotFoundException:
        raise ConfigurationError(
            f"secret variable {name}: the Secrets Manager secret {block.secret_name!r} "
            f"(block {reference!r}) does not exist in this account and region: create it, or "
            "fix the block's secret_name (and its credentials' region)"
        ) from None
    except (BotoCoreError, ClientError) as exc:
        error = classify_aws_error(exc, what)
        raise type(error)(f"{error} (block {reference!r})") from None
    finally:
        client.close()
    if secret.get("DeletedDate"):
        raise ConfigurationError(
            f"secret variable {name}: the Secrets Manager secret {block.secret_name!r} is "
            "scheduled for deletion, and ECS cannot read it: restore it "
            "(aws secretsmanager restore-secret) or reference another one"
        )
    stages = secret.get("VersionIdsToStages") or {}
    current = [version for version, labels in stages.items() if "AWSCURRENT" in labels]
    if not current:
        raise ConfigurationError(
            f"secret variable {name}: the Secrets Manager secret {block.secret_name!r} has no "
            "current value for ECS to read: put one (aws secretsmanager put-secret-value)"
        )
    # ECS's valueFrom `arn:json-key:version-stage:version-id`: pinned to the version that is
    # current now, so a task restarted later, or a rollback, runs the value this release ran.
    return f"{secret['ARN']}:::{current[0]}"


def registry_credentials(
    settings: EcsSettings, registry_host: str | None = None
) -> DockerRegistryCredentials:
    """Docker login for ECR from `get_authorization_token` (a base64 'user:password').
    The login goes to `registry_host` (the image repository's host) or, if None, to the
    host of the token's proxy endpoint."""
    ecr = _client(settings.aws_credentials, "ecr")
    try:
        data = ecr.get_authorization_token()["authorizationData"][0]
    except (BotoCoreError, ClientError) as exc:
        raise classify_aws_error(exc, "get an ECR authorization token") from None
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    host = registry_host or urlparse(data["proxyEndpoint"]).netloc
    return DockerRegistryCredentials(username=username, password=password, registry_url=host)


def confirm_pushed_image(settings: EcsSettings, pinned_reference: str) -> None:
    """Ask ECR (`describe_images`) whether it holds the pushed digest; raise if not."""
    ref = parse_image_reference(pinned_reference)
    if not ref.digest:
        raise ConfigurationError(
            f"{pinned_reference!r} is not pinned: pass repository@sha256:<digest> as the push "
            "returned it"
        )
    ecr = _client(settings.aws_credentials, "ecr")
    try:
        images = ecr.describe_images(
            repositoryName=ref.repository, imageIds=[{"imageDigest": ref.digest}]
        )["imageDetails"]
    except ecr.exceptions.RepositoryNotFoundException:
        raise ConfigurationError(
            f"ECR repository {ref.repository!r} does not exist: create it or fix the "
            "environment's image_repository"
        ) from None
    except ecr.exceptions.ImageNotFoundException:
        images = []
    except (BotoCoreError, ClientError) as exc:
        raise classify_aws_error(exc, f"describe image {pinned_reference}") from None
    if not any(image.get("imageDigest") == ref.digest for image in images):
        raise StepFailed(f"ECR does not list {ref.digest} in {ref.repository!r} after the push")


def _client(creds: AwsCredentials, service: str):
    """A boto3 client from the block (its get_client honours the custom endpoint)."""
    try:
        return creds.get_client(service)
    except BotoCoreError as exc:  # e.g. no region configured
        raise ConfigurationError(
            f"cannot create an AWS {service} client from the AwsCredentials block ({exc}): "
            "set region_name (and keys) in the block"
        ) from None
