"""The application spec: everything a release must know about the backend's shape, as
configuration with sane defaults, never taken from examples/backend. One small class per
concern, each with its own validation (in the manner of Kamal's configuration objects):

    build      where the code is, the Dockerfile, a stage per role, build args and secrets
    api        its command, the port it listens on, the variable that tells it the port
    worker     its command
    migrate    where Alembic runs (working directory, config file, executable)
    health     the path, a start period, how the running version shows
    database   the variables the app reads its database URL (or its parts) from

An `ApplicationSpec` block is shared by the environments that release the same backend
(a ReleaseEnvironment references it); what differs per environment (plain variables, env
file, secrets, the database itself) stays on the environment. Register the block type with
`prefect block register -m blocks.application`.
"""

import re
from pathlib import PurePosixPath
from typing import Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, field_validator, model_validator

from targets.alembic_cli import AlembicCli
from targets.base import DEFAULT_WORKER_COMMAND, Processes
from targets.database import DatabaseVariables, UrlPart, check_variable_names

ROLES = ("api", "worker", "migrate")
Role = Literal["api", "worker", "migrate"]
_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BLOCK_REFERENCE = re.compile(r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$")


def _relative(value: str, what: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{what} {value!r} must be a relative path inside the build context")
    return value


class Build(BaseModel):
    """How the images are built (BuildKit)."""

    source: str = Field(
        default=".",
        description="Where the code is: a directory, or a git URL (then `ref` is checked "
        "out). A release's `source` parameter overrides it.",
    )
    ref: str | None = Field(
        default=None, description="Branch, tag or commit to build when `source` is a git URL."
    )
    context: str = Field(
        default=".",
        description="Build context inside the source, e.g. '.' for a monorepo whose "
        "Dockerfile copies sibling packages.",
    )
    dockerfile: str = Field(
        default="Dockerfile",
        description="Path of the Dockerfile, relative to the context, e.g. "
        "'apps/backend/Dockerfile'.",
    )
    stages: dict[Role, str] = Field(
        default_factory=dict,
        description="Build stage (`--target`) per role ('api', 'worker', 'migrate'), e.g. "
        "{'api': 'backend', 'worker': 'worker', 'migrate': 'migrate'}. A role without one "
        "gets the Dockerfile's last stage; roles with the same stage share one image.",
    )
    args: dict[str, str] = Field(
        default_factory=dict, description="Build arguments (plain values; no secrets here)."
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="BuildKit secrets (`RUN --mount=type=secret,id=ID`): id -> secret block "
        "as '<block-type-slug>/<name>', e.g. {'pip-index-token': 'secret/pip-token'}. Never "
        "passed as build arguments.",
    )
    network: str = Field(
        default="host",
        description="Network of the build's RUN steps ('host', 'default' or 'none').",
    )

    @field_validator("context", "dockerfile")
    @classmethod
    def _inside_context(cls, value: str, info) -> str:
        return _relative(value, f"build.{info.field_name}")

    @field_validator("stages")
    @classmethod
    def _valid_stages(cls, value: dict[str, str]) -> dict[str, str]:
        for role, stage in value.items():
            if not _STAGE.match(stage):
                raise ValueError(f"build.stages[{role!r}]: {stage!r} is not a stage name")
        return value

    @field_validator("args")
    @classmethod
    def _valid_args(cls, value: dict[str, str]) -> dict[str, str]:
        check_variable_names(list(value), "build.args")
        return value

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for secret_id, reference in value.items():
            if not _BLOCK_REFERENCE.match(reference):
                raise ValueError(
                    f"build.secrets[{secret_id!r}]: {reference!r} must name a secret block as "
                    "'<block-type-slug>/<name>', e.g. 'secret/pip-token'"
                )
        return value

    def stage(self, role: Role) -> str | None:
        return self.stages.get(role)


class Api(BaseModel):
    """How the API process starts and listens."""

    command: list[str] | None = Field(
        default=None,
        description="Command that starts the API (None: the image's own CMD), e.g. "
        "['gunicorn', '-c', 'gunicorn.conf.py', 'app.main:app'].",
    )
    port: int = Field(
        default=8000, ge=1, le=65535, description="Port the API listens on in its container."
    )
    port_variable: str | None = Field(
        default="PORT",
        description="Environment variable that tells the API which port to listen on (None: "
        "it always listens on `port`).",
    )


class Worker(BaseModel):
    """How one Celery worker starts."""

    command: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WORKER_COMMAND),
        description="Command that starts one worker, e.g. "
        "['celery', '-A', 'rhesis.backend.worker', 'worker', '--loglevel=info'].",
    )


class Migrate(BaseModel):
    """Where Alembic runs in the migrate role's image: used by every Alembic call (upgrade,
    downgrade, current, offline render, the check, the rehearsal, the restore)."""

    directory: str | None = Field(
        default=None,
        description="Working directory of Alembic in the image (None: the image's WORKDIR), "
        "e.g. 'src/rhesis/backend' (relative to WORKDIR) or an absolute path.",
    )
    config: str = Field(
        default="alembic.ini",
        description="Alembic config file, relative to `directory` (its script_location is "
        "relative to that directory too).",
    )
    executable: list[str] = Field(
        default_factory=lambda: ["alembic"],
        description="How Alembic is started, e.g. ['alembic'] or ['python', '-m', 'alembic'].",
    )

    @field_validator("executable")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("migrate.executable must name a command, e.g. ['alembic']")
        return value

    def cli(self) -> AlembicCli:
        return AlembicCli(self.directory, self.config, tuple(self.executable))


class Health(BaseModel):
    """How verification reads the API's health and the version it runs."""

    path: str = Field(default="/health", description="Health endpoint of the API.")
    start_period_seconds: float = Field(
        default=0,
        ge=0,
        description="Time the API may take to answer at all before failed probes count "
        "against the health budget (a gunicorn app can take ~30 s).",
    )
    version_source: Literal["json", "header", "none"] = Field(
        default="json",
        description="Where the running version shows: a JSON field of the health answer, a "
        "response header, or nowhere (then verification proves the candidate by what the "
        "platform runs: the pinned image, the tagged revision, the new task definition).",
    )
    version_key: str = Field(
        default="version",
        description="The JSON field or header name holding the version (e.g. 'X-App-Version').",
    )

    @field_validator("path")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"health.path {value!r} must start with '/'")
        return value


class Database(BaseModel):
    """The variables the application reads its database from (values: the environment's
    `database_url` Secret)."""

    url_variables: list[str] = Field(
        default=["DATABASE_URL"],
        description="Variables the application reads the whole URL from, e.g. "
        "['SQLALCHEMY_DATABASE_URL']. The migration rehearsal points every one of them at "
        "its scratch database.",
    )
    url_parts: dict[str, UrlPart] = Field(
        default_factory=dict,
        description="For apps that build the URL from parts: variable -> part ('user', "
        "'password', 'host', 'port' or 'database'), e.g. {'SQLALCHEMY_DB_USER': 'user', "
        "'SQLALCHEMY_DB_PASS': 'password', 'SQLALCHEMY_DB_HOST': 'host', "
        "'SQLALCHEMY_DB_NAME': 'database'}. The rehearsal overrides these too.",
    )

    @field_validator("url_variables")
    @classmethod
    def _valid_url_variables(cls, value: list[str]) -> list[str]:
        return check_variable_names(value, "database.url_variables")

    @field_validator("url_parts")
    @classmethod
    def _valid_part_variables(cls, value: dict[str, str]) -> dict[str, str]:
        check_variable_names(list(value), "database.url_parts")
        return value

    @model_validator(mode="after")
    def _some_variable(self) -> "Database":
        if not self.url_variables and not self.url_parts:
            raise ValueError(
                "database.url_variables and database.url_parts are both empty: name at least "
                "one variable the application reads its database from"
            )
        return self

    def variables(self) -> DatabaseVariables:
        return DatabaseVariables(tuple(self.url_variables), dict(self.url_parts))


def processes(spec: "ApplicationSpec") -> Processes:
    api = spec.api
    return Processes(
        api_command=tuple(api.command) if api.command else None,
        api_port=api.port,
        port_variable=api.port_variable,
        worker_command=tuple(spec.worker.command),
    )


class ApplicationSpec(Block):
    """The shape of the backend a release builds and runs."""

    _block_type_name = "Application Spec"
    _block_type_slug = "application-spec"
    _description = (
        "The backend's shape: build (source, context, Dockerfile, a stage per role, args, "
        "BuildKit secrets), the API and worker commands and ports, where Alembic runs, how "
        "/health shows the version, and the variables the app reads its database from."
    )

    build: Build = Field(default_factory=Build, description=Build.__doc__)
    api: Api = Field(default_factory=Api, description=Api.__doc__)
    worker: Worker = Field(default_factory=Worker, description=Worker.__doc__)
    migrate: Migrate = Field(default_factory=Migrate, description=Migrate.__doc__)
    health: Health = Field(default_factory=Health, description=Health.__doc__)
    database: Database = Field(default_factory=Database, description=Database.__doc__)
