"""The release record: one per environment while a release is in flight.

It is the saga log. It holds the snapshot (the rollback point), the image being released
and the compensations registered so far, and it lives in a Prefect Variable, so a later
`rollback` run can undo a release whose process died midway. Its presence also keeps a
second release of the same environment from starting.
"""

from dataclasses import dataclass, field

from prefect.exceptions import ObjectAlreadyExists
from prefect.variables import Variable

from targets.errors import ConfigurationError
from tasks.snapshot import Snapshot

# Compensations, in the order a rollback applies them: the previous application first,
# then the schema (migrations are expand/contract, so old code runs on the new schema).
API, WORKERS, SCHEMA = "api", "workers", "schema"
ROLLBACK_ORDER = (API, WORKERS, SCHEMA)


def _key(environment: str) -> str:
    return f"release-record-{environment}"


@dataclass
class ReleaseRecord:
    environment: str
    flow_run_id: str | None
    image: str | None = None
    version: str | None = None
    snapshot: Snapshot | None = None
    compensations: list[str] = field(default_factory=list)
    # Pending revisions released although their downgrade cannot run (allow_breaking).
    irreversible: list[str] = field(default_factory=list)
    ledger_id: str | None = None  # the release's ledger entry, completed by the rollback
    # How the schema compensation moves: a release undoes its upgrade ("downgrade"); a
    # restore of an earlier release undoes its downgrade ("upgrade").
    schema_undo: str = "downgrade"

    def save(self) -> None:
        Variable.set(_key(self.environment), self.to_dict(), overwrite=True)

    def register(self, *compensations: str) -> None:
        """Record undo steps BEFORE their mutations run: a step that fails halfway has
        already changed something, and every compensation is safe to apply regardless."""
        new = [c for c in compensations if c not in self.compensations]
        if new:
            self.compensations.extend(new)
            self.save()

    def clear(self) -> None:
        Variable.unset(_key(self.environment))

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "flow_run_id": self.flow_run_id,
            "image": self.image,
            "version": self.version,
            "snapshot": self.snapshot.to_dict() if self.snapshot else None,
            "compensations": list(self.compensations),
            "irreversible": list(self.irreversible),
            "ledger_id": self.ledger_id,
            "schema_undo": self.schema_undo,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ReleaseRecord":
        snapshot = Snapshot.from_dict(data["snapshot"]) if data.get("snapshot") else None
        return cls(
            environment=data["environment"],
            flow_run_id=data.get("flow_run_id"),
            image=data.get("image"),
            version=data.get("version"),
            snapshot=snapshot,
            compensations=list(data.get("compensations", [])),
            irreversible=list(data.get("irreversible", [])),
            ledger_id=data.get("ledger_id"),
            schema_undo=data.get("schema_undo", "downgrade"),
        )


def load_record(environment: str) -> ReleaseRecord | None:
    data = Variable.get(_key(environment))
    return ReleaseRecord.from_dict(data) if data else None


def claim(environment: str, flow_run_id: str | None) -> ReleaseRecord:
    """Start the record for a new release, or refuse when one is already in flight.
    Creating the variable without overwrite is atomic: two claims cannot both win. The
    loser sees ValueError (the client saw the variable first) or ObjectAlreadyExists (the
    server refused the second create when both checked at once)."""
    record = ReleaseRecord(environment=environment, flow_run_id=flow_run_id)
    try:
        Variable.set(_key(environment), record.to_dict(), overwrite=False)
    except (ValueError, ObjectAlreadyExists):
        existing = load_record(environment)
        raise ConfigurationError(
            f"a release to {environment!r} is already in flight or died midway (flow run "
            f"{existing.flow_run_id if existing else '?'}). Wait for it to end, or undo it "
            f"with the rollback flow: `python -m flows.rollback {environment}`"
        ) from None
    return record
