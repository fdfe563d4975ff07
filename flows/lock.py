"""One change in flight per environment: the lock is a Prefect Variable holding the change's
saga log (ReleaseRecord.saga_log: the rollback point and the compensations registered so
far). Taking it is atomic, creating the Variable without overwrite, so two releases cannot
both win; and a later `rollback` run reads it to undo a change whose process died."""

from prefect.exceptions import ObjectAlreadyExists
from prefect.variables import Variable

from ledger.record import ReleaseRecord
from targets.errors import ConfigurationError


def _key(environment: str) -> str:
    return f"release-record-{environment}"


def take(record: ReleaseRecord) -> None:
    """Hold the lock of the record's environment, or refuse when a change is in flight. The
    loser of a race sees ValueError (the client saw the Variable first) or
    ObjectAlreadyExists (the server refused the second create when both checked at once)."""
    try:
        Variable.set(_key(record.environment), record.saga_log(), overwrite=False)
    except (ValueError, ObjectAlreadyExists):
        held = in_flight(record.environment)
        raise ConfigurationError(
            f"a release to {record.environment!r} is already in flight or died midway (flow "
            f"run {held.flow_run_id if held else '?'}). Wait for it to end, or undo it with the "
            f"rollback flow: `python -m flows.rollback {record.environment}`"
        ) from None


def log(record: ReleaseRecord) -> None:
    """Write the saga log: BEFORE each mutation, so a crash midway leaves it undoable."""
    Variable.set(_key(record.environment), record.saga_log(), overwrite=True)


def free(environment: str) -> None:
    Variable.unset(_key(environment))


def in_flight(environment: str) -> ReleaseRecord | None:
    """The saga log of the change in flight (or dead midway) in `environment`."""
    data = Variable.get(_key(environment))
    return ReleaseRecord.model_validate(data) if data else None
