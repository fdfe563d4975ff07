"""Cloud Run settings block: where the Cloud Run target deploys and with which credentials.

Referenced by a Release Environment whose target is "cloudrun". Register the block type with
`prefect block register -m blocks.cloud_run`.
"""

import functools
import re
from typing import TYPE_CHECKING

import google.auth.transport.requests
import google.oauth2.id_token
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.cloud import secretmanager
from google.oauth2 import service_account
from prefect.blocks.core import Block
from prefect_docker import DockerRegistryCredentials
from prefect_gcp import GcpCredentials, GcpSecret
from pydantic import Field, field_validator

from targets.base import Processes
from targets.cloud_run_names import max_api_service_length, tag_room_problem
from targets.errors import AuthenticationError, ConfigurationError, TransientError

if TYPE_CHECKING:
    from targets.cloud_run import CloudRunTarget

_REGION = re.compile(r"^[a-z]+(-[a-z]+)+[0-9]+$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_RESOURCE = re.compile(r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$")
_CLOUDSQL = re.compile(r"^[a-z][a-z0-9-:.]*:[a-z]+(-[a-z]+)+[0-9]+:[a-z][a-z0-9-]*$")
ARTIFACT_REGISTRY_USER = "oauth2accesstoken"


class CloudRunSettings(Block):
    """The Google Cloud project, region, services and job a Cloud Run release uses."""

    _block_type_name = "Cloud Run Settings"
    _block_type_slug = "cloud-run-settings"
    _description = (
        "Cloud Run target of a release environment: GCP credentials (service-account key), "
        "project, region, the API and worker services, the migration job and Cloud SQL."
    )

    gcp_credentials: GcpCredentials = Field(
        description="Service-account credentials. The account needs Cloud Run Developer, "
        "Service Account User and Logs Viewer; the same key logs in to Artifact Registry."
    )
    project: str = Field(description="GCP project id, e.g. 'rhesis-staging'.")
    region: str = Field(description="Cloud Run region, e.g. 'europe-west1'.")
    api_service: str = Field(description="Cloud Run service of the API (must exist).")
    worker_service: str = Field(
        description="Cloud Run service of the Celery workers (must exist); its minimum "
        "instance count is the worker count and its CPU is always allocated."
    )
    migration_job: str = Field(
        default="migrate",
        description="Cloud Run job that runs one-off commands such as `alembic upgrade head` "
        "(created on first use).",
    )
    cloudsql_instances: list[str] = Field(
        default_factory=list,
        description="Cloud SQL instances ('project:region:instance') mounted under /cloudsql "
        "in every revision and job, as gcloud's --add-cloudsql-instances does.",
    )
    api_endpoint: str | None = Field(
        default=None,
        description="Cloud Run Admin API endpoint; None: Google's default (run.googleapis.com).",
    )
    allow_plain_secret_values: bool = Field(
        default=False,
        description="Accept secret variables (`secrets`) from blocks other than GcpSecret "
        "(e.g. a Prefect Secret) as plain values of the Cloud Run services and job: they are "
        "then stored in clear in their definitions, readable by anyone with "
        "run.services.get. False: such an environment is refused before any change. "
        "GcpSecret variables are always Secret Manager references.",
    )
    secret_manager_endpoint: str | None = Field(
        default=None,
        description="Secret Manager API endpoint; None: Google's default "
        "(secretmanager.googleapis.com).",
    )
    logging_endpoint: str = Field(
        default="https://logging.googleapis.com",
        description="Cloud Logging API endpoint, where the migration job's output is read "
        "(Logging API v2 entries:list). The service account needs the Logs Viewer role "
        "(roles/logging.viewer).",
    )
    log_wait_seconds: float = Field(
        default=60,
        gt=0,
        description="How long, at most, to wait for a job execution's log entries to reach "
        "Cloud Logging (they are read until their count stops growing).",
    )
    operation_timeout_seconds: float = Field(
        default=600, gt=0, description="Deadline for one Cloud Run operation (e.g. a rollout)."
    )

    @field_validator("region")
    @classmethod
    def _valid_region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError(
                f"region {value!r} is not a Cloud Run region: expected the shape "
                "'<area>-<direction><number>', e.g. 'europe-west1' or 'us-central1'"
            )
        return value

    @field_validator("project")
    @classmethod
    def _valid_project(cls, value: str) -> str:
        if not _PROJECT.match(value):
            raise ValueError(
                f"project {value!r} is not a GCP project id: 6-30 lowercase letters, digits "
                "and '-', starting with a letter (the id, not the display name)"
            )
        return value

    @field_validator("api_service", "worker_service", "migration_job")
    @classmethod
    def _valid_resource(cls, value: str) -> str:
        if not _RESOURCE.match(value):
            raise ValueError(
                f"{value!r} is not a Cloud Run service/job name: lowercase letters, digits "
                "and '-', starting with a letter, at most 49 characters"
            )
        return value

    @field_validator("api_service")
    @classmethod
    def _tag_fits(cls, value: str) -> str:
        if len(value) > max_api_service_length():
            raise ValueError(tag_room_problem(value))
        return value

    @field_validator("cloudsql_instances")
    @classmethod
    def _valid_instances(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _CLOUDSQL.match(name):
                raise ValueError(
                    f"Cloud SQL instance {name!r} must be the connection name "
                    "'project:region:instance', e.g. 'rhesis-staging:europe-west1:db'"
                )
        return value


def connect(
    settings: CloudRunSettings,
    environment_name: str,
    container_env: dict[str, str],
    processes: Processes | None = None,
    secrets: dict[str, tuple[str, str]] | None = None,
) -> "CloudRunTarget":
    """The Cloud Run adapter for an environment (its `cloud_run` settings block)."""
    # Here, not at the top: the Admin API client (run_v2) is for releases to Cloud Run only.
    from targets.cloud_run import CloudRunTarget

    credentials = _credentials(settings)
    return CloudRunTarget(
        credentials,
        project=settings.project,
        region=settings.region,
        api_service=settings.api_service,
        worker_service=settings.worker_service,
        migration_job=settings.migration_job,
        env={**container_env, "APP_ENVIRONMENT": environment_name},
        cloudsql_instances=settings.cloudsql_instances,
        processes=processes,
        api_endpoint=settings.api_endpoint,
        operation_timeout=settings.operation_timeout_seconds,
        identity=functools.partial(identity_credentials, settings),
        secrets=secrets,
        logging_endpoint=settings.logging_endpoint,
        log_wait=settings.log_wait_seconds,
    )


def identity_credentials(settings: CloudRunSettings, audience: str):
    """Credentials whose token is an identity token for `audience` (a Cloud Run service
    URL): signed by the block's service-account key, or the application default
    credentials' (metadata server, GOOGLE_APPLICATION_CREDENTIALS)."""
    gcp = settings.gcp_credentials
    if gcp.service_account_info:
        info = gcp.service_account_info.get_secret_value()
        return service_account.IDTokenCredentials.from_service_account_info(
            info, target_audience=audience
        )
    if gcp.service_account_file:
        return service_account.IDTokenCredentials.from_service_account_file(
            str(gcp.service_account_file), target_audience=audience
        )
    try:
        return google.oauth2.id_token.fetch_id_token_credentials(audience)
    except auth_exceptions.DefaultCredentialsError:
        raise ConfigurationError(
            "the Cloud Run API service requires authentication and no credentials can make "
            "an identity token: add a service-account key to the GcpCredentials block"
        ) from None


def secret_references(
    settings: CloudRunSettings, secrets: dict[str, str], environment: str
) -> dict[str, tuple[str, str]]:
    """The secret variables that become Secret Manager references: name -> (secret, version),
    the version pinned now (a 'latest' GcpSecret resolves to its current number), so a
    revision runs, and a rollback restores, the secret versions of its release. Reads
    versions' metadata only, never a value. Variables from other blocks stay plain values,
    refused unless the settings allow them."""
    blocks = {name: _secret_block(reference, name) for name, reference in secrets.items()}
    plain = sorted(name for name, block in blocks.items() if not isinstance(block, GcpSecret))
    if plain and not settings.allow_plain_secret_values:
        raise ConfigurationError(
            f"Cloud Run secret variables {', '.join(plain)} of environment {environment!r} come "
            "from blocks that are not GcpSecret blocks: they would be stored as plain values in "
            "the Cloud Run service and job definitions, readable by anyone who can view them. "
            "Put them in Secret Manager and reference GcpSecret blocks "
            "(GcpSecret(secret_name=..., gcp_credentials=...)) in `secrets`, or accept plain "
            "values with the Cloud Run settings' `allow_plain_secret_values`"
        )
    wanted = {n: b for n, b in blocks.items() if isinstance(b, GcpSecret)}
    if not wanted:
        return {}
    options = ClientOptions(api_endpoint=settings.secret_manager_endpoint)
    client = secretmanager.SecretManagerServiceClient(
        credentials=_credentials(settings),
        transport="rest",
        client_options=options if settings.secret_manager_endpoint else None,
    )
    try:
        return {name: _pinned(client, settings, name, b) for name, b in sorted(wanted.items())}
    finally:
        client.transport.close()


def _secret_block(reference: str, name: str) -> Block:
    try:
        return Block.load(reference)
    except ValueError as exc:
        raise ConfigurationError(
            f"the secret block {reference!r} for secret variable {name} cannot be loaded "
            f"({exc}): create it (e.g. `GcpSecret(secret_name=...).save(NAME)`), or fix the "
            "reference ('gcpsecret/<name>')"
        ) from None


def _pinned(client, settings: CloudRunSettings, name: str, block: GcpSecret) -> tuple[str, str]:
    project = block.gcp_credentials.project or settings.project
    secret = f"projects/{project}/secrets/{block.secret_name}"
    wanted = f"{secret}/versions/{block.secret_version or 'latest'}"
    try:
        version = client.get_secret_version(name=wanted)
    except api_exceptions.NotFound:
        raise ConfigurationError(
            f"secret variable {name}: Secret Manager has no {wanted}: add a version "
            f"(gcloud secrets versions add {block.secret_name} --project {project}) or fix the "
            "GcpSecret block's secret_name/secret_version"
        ) from None
    except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as exc:
        raise AuthenticationError(
            f"secret variable {name}: Google refused to show {wanted} ({exc.message}): give "
            "the release's service account the Secret Manager Viewer role on the secret"
        ) from None
    except api_exceptions.GoogleAPICallError as exc:
        raise TransientError(f"secret variable {name}: Secret Manager: {exc.message}") from None
    except auth_exceptions.TransportError as exc:
        raise TransientError(f"Secret Manager did not answer ({exc})") from None
    if version.state != secretmanager.SecretVersion.State.ENABLED:
        raise ConfigurationError(
            f"secret variable {name}: {version.name} is {version.state.name}, so Cloud Run "
            "could not read it: enable it, or pin an enabled version in the GcpSecret block"
        )
    number = version.name.rsplit("/", 1)[-1]
    short = block.secret_name if project == settings.project else secret
    return short, number


def registry_credentials(
    settings: CloudRunSettings, registry_host: str
) -> DockerRegistryCredentials:
    """Artifact Registry login (REGION-docker.pkg.dev): an access token of the service account."""
    credentials = _credentials(settings)
    try:
        credentials.refresh(google.auth.transport.requests.Request())
    except auth_exceptions.RefreshError:
        raise AuthenticationError(
            "Google refused the service-account key when asked for an access token: replace "
            "the key in the GcpCredentials block"
        ) from None
    except auth_exceptions.TransportError as exc:
        raise TransientError(f"the Google token endpoint did not answer ({exc})") from None
    return DockerRegistryCredentials(
        username=ARTIFACT_REGISTRY_USER, password=credentials.token, registry_url=registry_host
    )


def _credentials(settings: CloudRunSettings):
    try:
        return settings.gcp_credentials.get_credentials_from_service_account()
    except auth_exceptions.DefaultCredentialsError:
        raise ConfigurationError(
            "the GcpCredentials block has no service-account key and no application default "
            "credentials exist: add the key JSON as service_account_info"
        ) from None
