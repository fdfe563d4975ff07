"""One release (or restore of an earlier release) as a single model, from its first step to
its outcome. Everything else is a view of it: the in-flight saga log (a Prefect Variable,
`saga_log`), the ledger row (`row`), the summary and ledger artifacts (flows/artifacts.py).

Prefect-free, so the ledger store and the tests read it without a flow run.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from targets.base import TargetState

IN_PROGRESS = "in progress"
# Outcomes after which nobody knows what runs (no expected state).
UNKNOWN_STATE = (IN_PROGRESS, "rollback failed")
# Outcomes that leave the environment running what the record rolled out.
GOOD = ("released", "restored")


class Compensation(StrEnum):
    """What a rollback undoes, registered before the step that changes it."""

    API = "api"
    WORKERS = "workers"
    SCHEMA = "schema"


# The order a rollback applies them: the previous application first, then the schema
# (migrations are expand/contract, so the old code runs on the new schema).
ROLLBACK_ORDER = (Compensation.API, Compensation.WORKERS, Compensation.SCHEMA)


class Snapshot(BaseModel):
    """What ran before a change: the rollback point."""

    state: TargetState
    schema_revision: str | None
    taken_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def first_release(self) -> bool:
        """Nothing runs yet and the schema is at base (no revision can be breaking)."""
        return self.state.api.image is None and self.schema_revision is None


@dataclass(frozen=True)
class Expected:
    """What should run in the environment once a record ended."""

    image: str | None
    workers: int
    schema: str | None


class Step(BaseModel):
    name: str
    started: float | None = None  # seconds after the record started
    seconds: float | None = None
    outcome: str = "running"  # running | ok | failed


class ReleaseRecord(BaseModel):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    environment: str
    kind: Literal["release", "restore"] = "release"
    source: str | None = None
    started_by: str = "python"
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    # What ran before (from the snapshot) and what is rolled out.
    snapshot: Snapshot | None = None
    previous_image: str | None = None
    previous_version: str | None = None
    schema_before: str | None = None
    workers_before: int | None = None
    image: str | None = None  # the API's pinned image
    images: dict[str, str] = Field(default_factory=dict)  # every role's: api, worker, migrate
    version: str | None = None
    workers_after: int | None = None
    # The saga log: compensations registered so far, and how the schema one moves (a
    # release undoes its upgrade with a downgrade; a restore undoes its downgrade with an
    # upgrade). Pending revisions released although they cannot be downgraded.
    compensations: list[Compensation] = Field(default_factory=list)
    schema_undo: Literal["downgrade", "upgrade"] = "downgrade"
    # The image whose migration scripts move the schema back: the new migrate image when a
    # release is undone, the one that ran before when a restore is undone.
    schema_image: str | None = None
    irreversible: list[str] = Field(default_factory=list)
    approved_by: str | None = None  # who approved it (and their comment), where required
    # How it went.
    steps: list[Step] = Field(default_factory=list)
    outcome: str = IN_PROGRESS
    message: str | None = None
    schema_after: str | None = None
    rollback: list[str] = Field(default_factory=list)  # what the rollback restored
    expected: Expected | None = None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def title(self) -> str:
        """E.g. 'release of v2 to staging', for messages."""
        unknown = "an earlier release" if self.kind == "restore" else "a new version"
        return f"{self.kind} of {self.version or unknown} to {self.environment}"

    def took_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        state = snapshot.state
        self.previous_image, self.previous_version = state.api.image, state.api.version
        self.schema_before, self.workers_before = snapshot.schema_revision, state.workers.replicas

    def rolls_out(self, images: dict[str, str], version: str, workers: int) -> None:
        self.image, self.images = images["api"], dict(images)
        self.version, self.workers_after = version, workers

    def end(self, outcome: str, message: str, schema_after: str | None) -> None:
        """Close the record with what should run now (unknown after a failed rollback)."""
        self.ended_at = datetime.now(UTC)
        self.outcome, self.message, self.schema_after = outcome, message, schema_after
        if outcome in UNKNOWN_STATE:
            self.expected = None
        elif outcome in GOOD or outcome == "no-op":
            self.expected = Expected(self.image, self.workers_after or 0, schema_after)
        elif self.snapshot is not None:  # rolled back, or failed having changed nothing
            self.expected = Expected(self.previous_image, self.workers_before or 0, schema_after)

    # -- views ------------------------------------------------------------------------------
    def saga_log(self) -> dict:
        """What a later run needs to undo this one (kept in the environment's lock)."""
        return self.model_dump(mode="json", include=SAGA_LOG)

    def summary(self) -> dict:
        """What the flows return: the record without its saga log."""
        return self.model_dump(mode="json", exclude=SAGA_LOG_ONLY)

    def row(self) -> dict:
        """The ledger row."""
        return self.model_dump(exclude=SAGA_LOG_ONLY)

    def seconds(self) -> float | None:
        return (self.ended_at - self.started_at).total_seconds() if self.ended_at else None


# The saga log: what a later run needs to undo this one. The ledger row keeps all the rest
# and, of the log, who it is and what it rolled out.
SAGA_LOG_ONLY = {"snapshot", "compensations", "schema_undo", "schema_image", "irreversible"}
SAGA_LOG = {"id", "environment", "kind", "flow_run_id", "image", "images", "version"}
SAGA_LOG |= {"workers_after"}
SAGA_LOG |= SAGA_LOG_ONLY
