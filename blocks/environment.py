"""The release environment block: one per environment (staging, production, ...).

It says where a release goes and how to judge it, and references the credential blocks
(registry credentials, the database URL as a Secret). Register the block type with
`prefect block register -m blocks.environment`.
"""

import re
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import Field, field_validator, model_validator

from blocks.application import ApplicationSpec, processes
from blocks.cloud_run import CloudRunSettings
from blocks.cloud_run import connect as connect_cloud_run
from blocks.cloud_run import registry_credentials as cloud_run_registry_credentials
from blocks.cloud_run import secret_references as cloud_run_secret_references
from blocks.docker_engine import engine_client
from blocks.ecs import SSM_ARN, EcsSettings, confirm_pushed_image, secret_references
from blocks.ecs import connect as connect_ecs
from blocks.ecs import registry_credentials as ecr_registry_credentials
from blocks.secrets import secret_values
from targets.base import Target
from targets.database import DatabaseVariables, check_variable_names
from targets.docker_host import DockerHostTarget
from targets.errors import ConfigurationError
from targets.images import parse_image_reference

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ReleaseEnvironment(Block):
    """Where a release goes (target, image repository, services) and how it is verified."""

    _block_type_name = "Release Environment"
    _block_type_slug = "release-environment"
    _description = (
        "A deployment environment for the release flows: target platform, image repository, "
        "API and worker settings, health check budget, and references to credential blocks."
    )

    environment: str = Field(
        description="Environment name, e.g. 'staging'. Lowercase letters, digits and '-'; "
        "used in container names and labels."
    )
    target: Literal["docker", "cloudrun", "ecs"] = Field(
        default="docker", description="Platform the release goes to."
    )
    image_repository: str = Field(
        description="Where images are pushed, without tag, e.g. '127.0.0.1:5000/rhesis/backend'."
    )
    registry_credentials: DockerRegistryCredentials | None = Field(
        default=None, description="Login for the image registry (None: no login)."
    )
    application: ApplicationSpec = Field(
        default_factory=ApplicationSpec,
        description="The backend's shape (an Application Spec block, shared by the "
        "environments that release it): build, commands, ports, Alembic, health, and the "
        "variables it reads its database from.",
    )
    database_url: Secret = Field(
        description="Secret block holding the PostgreSQL URL the backend and migrations use "
        "(it reaches the app under the names `application.database` lists)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain environment variables for every container (no secrets here: "
        "they are stored and shown in clear; the database URL comes from `database_url`).",
    )
    env_file: str | None = Field(
        default=None,
        description="A file of plain variables (KEY=VALUE lines, as `docker run --env-file` "
        "reads) on the machine that runs the release; `env` overrides it.",
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Secret variables of every container: name -> secret block as "
        "'<block-type-slug>/<name>' (a Secret, AwsSecret or GcpSecret), e.g. "
        "{'AUTH0_CLIENT_SECRET': 'secret/rhesis-auth0-client-secret'}. Read when a release "
        "starts; a missing block fails it before any change.",
    )
    cloud_run: CloudRunSettings | None = Field(
        default=None,
        description="Cloud Run project, region, services and GCP credentials (target 'cloudrun').",
    )
    ecs: EcsSettings | None = Field(
        default=None,
        description="ECS cluster, services and AWS credentials (target 'ecs').",
    )
    # Docker host target.
    docker_host: DockerHost = Field(
        default_factory=DockerHost, description="Docker engine to deploy to (default: local)."
    )
    docker_network: str = Field(
        default="host",
        description="'host' for host networking, or a Docker network name; then the API "
        "port is published on docker_publish_address.",
    )
    docker_publish_address: str = Field(
        default="127.0.0.1", description="Host address the API port is published on."
    )
    docker_volumes: list[str] = Field(
        default_factory=list,
        description="Volumes of every container, as `docker run -v` takes them "
        "('HOST:CONTAINER[:ro]'), e.g. PostgreSQL's socket directory "
        "'/var/run/postgresql:/var/run/postgresql'.",
    )
    api_port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="Port users reach the API on: with host networking the API listens on it "
        "(through `application.api.port_variable`), otherwise `application.api.port` is "
        "published on it.",
    )
    # Workers and one-off commands.
    worker_count: int = Field(default=1, ge=0, le=100, description="Celery workers to run.")
    migration_timeout_seconds: float = Field(
        default=600, gt=0, description="Deadline for one migration run."
    )
    migration_lock_timeout: str = Field(
        default="5s",
        description="PostgreSQL lock_timeout for migrations, so a migration waiting on a "
        "busy table fails fast instead of blocking the application.",
    )
    migration_statement_timeout: str = Field(
        default="5min", description="PostgreSQL statement_timeout for migrations."
    )
    migration_rehearsal: bool = Field(
        default=True,
        description="Before a release migrates, rehearse upgrade -> downgrade -> upgrade of "
        "the pending revisions on a scratch database on the same server (needs CREATEDB).",
    )
    # Verification (defaults in the spirit of Kamal: poll 1 s, 5 s per request, 30 s budget).
    health_consecutive: int = Field(
        default=3, ge=1, description="Consecutive healthy answers needed to pass."
    )
    health_interval_seconds: float = Field(default=1.0, gt=0, description="Poll interval.")
    health_request_timeout_seconds: float = Field(default=5.0, gt=0, description="Per request.")
    health_budget_seconds: float = Field(
        default=30.0, gt=0, description="Overall deadline for the API to become healthy."
    )
    worker_budget_seconds: float = Field(
        default=60.0, gt=0, description="Deadline for the workers to report ready."
    )
    # Approval.
    require_approval: bool = Field(
        default=False,
        description="Pause every release before its first change until someone approves it "
        "(resume the paused flow run with who approves).",
    )
    approval_timeout_seconds: int = Field(
        default=3600,
        ge=1,
        description="How long a release waits for its approval; then it ends without "
        "changing anything.",
    )
    # Image pushes (the event bridge).
    push_routes: list[str] = Field(
        default_factory=list,
        description="Pushed images the event bridge releases to this environment: "
        "shell-style patterns on 'registry/repository:tag', e.g. ['*/rhesis/backend:main-*'].",
    )
    # Notifications.
    notification_block: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$",
        description="Notification block told the outcome of every release and rollback, with "
        "a link to the flow run, as '<block-type-slug>/<block-name>' (e.g. "
        "'custom-webhook/release-alerts', 'slack-webhook/ops').",
    )

    @field_validator("environment")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"environment name {value!r} must be lowercase letters, digits and '-' "
                "(it is used in container names)"
            )
        return value

    @field_validator("image_repository")
    @classmethod
    def _valid_repository(cls, value: str) -> str:
        try:
            ref = parse_image_reference(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        if ref.tag or ref.digest:
            raise ValueError(
                f"image_repository {value!r} must not carry a tag or digest: "
                f"use {ref.name!r}; each release sets its own tag"
            )
        return value

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        check_variable_names(list(value), "secrets")
        for name, reference in value.items():
            if not re.match(r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$", reference) and not SSM_ARN.match(
                reference
            ):
                raise ValueError(
                    f"secrets[{name!r}]: {reference!r} must name a secret block as "
                    "'<block-type-slug>/<name>', e.g. 'secret/rhesis-jwt-secret-key' (or, on "
                    "ECS, an SSM parameter by its ARN)"
                )
        return value

    @field_validator("docker_volumes")
    @classmethod
    def _valid_volumes(cls, value: list[str]) -> list[str]:
        for volume in value:
            if not re.match(r"^[^:]+:/[^:]*(:(ro|rw))?$", volume):
                raise ValueError(
                    f"docker volume {volume!r} must be 'HOST:CONTAINER' or "
                    "'HOST:CONTAINER:ro', the container path absolute"
                )
        return value

    @model_validator(mode="after")
    def _one_source_per_variable(self) -> "ReleaseEnvironment":
        database = set(self.database_variables().names)
        clashes = {
            "also filled from `database_url`": set(self.env) & database,
            "also a secret": set(self.env) & set(self.secrets),
            "a secret and also filled from `database_url`": set(self.secrets) & database,
        }
        for why, names in clashes.items():
            if names:
                raise ValueError(
                    f"{', '.join(sorted(names))} set in `env` or `secrets` and {why}: give each "
                    "variable one source (plain values are stored in clear, and the rehearsal "
                    "must be able to point the database variables at its scratch database)"
                )
        return self

    def database_url_value(self) -> str:
        return self.database_url.get()

    def database_variables(self) -> DatabaseVariables:
        return self.application.database.variables()


def load_environment(name: str) -> ReleaseEnvironment:
    """Load the environment block `name`, or say how to create it."""
    try:
        return ReleaseEnvironment.load(name)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        raise ConfigurationError(
            f"unknown environment {name!r}: no Release Environment block named {name!r}. "
            "Create it (see README, 'Configure an environment') or pick one of "
            f"{known_environments() or 'none yet'}"
        ) from None


def known_environments() -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            docs = client.read_block_documents_by_type(block_type_slug="release-environment")
    except (ObjectNotFound, PrefectHTTPStatusError):
        return []  # block type not registered yet
    return sorted(d.name for d in docs if d.name)


def connect_target(env: ReleaseEnvironment) -> Target:
    """The platform adapter for this environment's target."""
    if env.target == "docker":
        return DockerHostTarget(
            engine_client(env.docker_host),
            env.environment,
            port=env.api_port,
            network=env.docker_network,
            publish_address=env.docker_publish_address,
            env=container_env(env),
            processes=processes(env.application),
            volumes=env.docker_volumes,
            registry_auth=registry_auth(env),
        )
    if env.target == "cloudrun":
        settings = _settings(env, "cloud_run")
        references = cloud_run_secret_references(settings, env.secrets, env.environment)
        return connect_cloud_run(
            settings,
            env.environment,
            container_env(env, references=set(references)),
            processes=processes(env.application),
            secrets=references,
        )
    if env.target == "ecs":
        # Secret variables reach the task definitions as references (valueFrom ARNs), never
        # as values: the one-off tasks' environment holds only plain ones.
        settings = _settings(env, "ecs")
        references = secret_references(settings, env.secrets)
        return connect_ecs(
            settings,
            env.environment,
            container_env(env, references=set(references)),
            plain_env={**env_file_values(env), **env.env},
            processes=processes(env.application),
            secrets=references,
        )
    raise ConfigurationError(f"target {env.target!r} is not supported by this version")


def _settings(env: ReleaseEnvironment, field: Literal["cloud_run", "ecs"]):
    """The environment's settings block for its cloud target, which it must have."""
    settings = getattr(env, field)
    if settings is None:
        kind = {"cloud_run": "Cloud Run", "ecs": "ECS"}[field]
        raise ConfigurationError(
            f"environment {env.environment!r} has target {env.target!r} but no {kind} "
            f"settings: create a {kind} Settings block and set it as the environment's "
            f"`{field}` field (see README)"
        )
    return settings


def container_env(env: ReleaseEnvironment, references: set[str] = frozenset()) -> dict[str, str]:
    """Environment of every backend container: the env file, the plain variables, the
    secret variables (but `references`: those the platform resolves itself), and the
    database URL under the names the application reads."""
    secrets = {name: ref for name, ref in env.secrets.items() if name not in references}
    return {
        **env_file_values(env),
        **env.env,
        **secret_values(secrets, "secret variable"),
        **env.database_variables().environment(env.database_url_value()),
    }


def env_file_values(env: ReleaseEnvironment) -> dict[str, str]:
    if env.env_file is None:
        return {}
    path = Path(env.env_file)
    if not path.is_file():
        raise ConfigurationError(
            f"env_file {env.env_file!r} of environment {env.environment!r} does not exist on "
            "this machine: create it, or fix the path (relative paths start where the "
            "release runs)"
        )
    values = dotenv_values(path)
    if empty := sorted(name for name, value in values.items() if value is None):
        raise ConfigurationError(
            f"env_file {env.env_file!r}: {', '.join(empty)} has no value: write NAME=VALUE"
        )
    return {name: value for name, value in values.items() if value is not None}


def registry_auth(env: ReleaseEnvironment) -> dict[str, str] | None:
    creds = env.registry_credentials
    if creds is None:
        return None
    return {"username": creds.username, "password": creds.password.get_secret_value()}


def push_credentials(env: ReleaseEnvironment) -> DockerRegistryCredentials | None:
    """Credentials to push to and pull from the environment's image repository: the
    registry credentials block, or else a token from the cloud target's credentials."""
    if env.registry_credentials is not None or env.target == "docker":
        return env.registry_credentials
    registry = parse_image_reference(env.image_repository).registry
    if env.target == "cloudrun":
        return cloud_run_registry_credentials(_settings(env, "cloud_run"), registry or "")
    if env.target == "ecs":
        return ecr_registry_credentials(_settings(env, "ecs"), registry)
    raise ConfigurationError(f"target {env.target!r} is not supported by this version")


def confirm_push(env: ReleaseEnvironment, pinned: str) -> bool:
    """Where the registry has its own API (ECR), check it lists the pushed digest.
    False where there is none to ask (the push's own digest stands)."""
    if env.target == "ecs":
        confirm_pushed_image(_settings(env, "ecs"), pinned)
        return True
    return False
