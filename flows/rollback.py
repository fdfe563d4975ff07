"""The `rollback` flow, for the two things an operator means by it:

- a release is in flight or died midway: undo exactly what it changed, from the saga log
  its lock holds (the compensating subflow, flows/compensate.py), and complete its ledger
  row;
- nothing is in flight: put back an earlier release from the ledger, the previous good
  one by default, or the one named by `to` (flows/restore.py).

    python -m flows.rollback ENVIRONMENT [RELEASE-ID]
"""

import sys

from prefect import flow

from blocks.environment import load_environment
from flows import lock
from flows.errors import ReleaseFailed
from flows.restore import restore
from flows.saga import Saga
from targets.errors import ConfigurationError


@flow(name="rollback", flow_run_name="rollback {environment}")
def rollback(environment: str, to: str | None = None) -> list[str]:
    """Undo the in-flight release of `environment`, or put back an earlier release.

    Args:
        environment: Name of the ReleaseEnvironment block.
        to: With no release in flight: the ledger id (or its first 8 characters) of the
            release to put back; empty means the previous good release.
    """
    what = f"rollback of {environment}"
    try:
        env = load_environment(environment)
        record = lock.in_flight(environment)
        if record is not None and to:
            raise ConfigurationError(
                f"a release of {environment!r} is in flight (flow run {record.flow_run_id}): "
                "undo it first (run rollback without `to`), then restore an earlier release"
            )
    except Exception as exc:
        raise ReleaseFailed.refused(what, exc) from exc
    if record is None:
        return restore(env, to or "previous")
    with Saga.resume(env, record) as saga:
        return saga.undo(f"{record.title} (flow run {record.flow_run_id}) ended without finishing")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m flows.rollback ENVIRONMENT [RELEASE-ID]")
    rollback(*sys.argv[1:])
