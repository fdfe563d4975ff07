"""The flow-run process a process worker starts for these deployments (prefect.yaml's
`command`): Prefect's own engine (`python -m prefect.engine`), with Prefect's flow-run
heartbeat thread off.

    python -m flows.engine          # PREFECT__FLOW_RUN_ID in the environment, as the worker sets

With RELEASE_WARM_ENGINE set, the run is forked from a warm engine instead (flows/warm_engine.py).

Why: Prefect joins that thread when a synchronous flow ends, and it sleeps in 1 s steps, so
every release waited up to a second after its last step for nothing (a no-op release took
1.1 s instead of 0.5 s, measured). Prefect only uses the heartbeat if you add its
zombie-flow automation; these flows do not rely on it: the worker marks a run whose process
died Crashed, and the environment's lock keeps the saga log the `rollback` flow finishes
from. The setting cannot be turned off from the environment (it only takes >= 30 s), hence
this module. `heartbeat_off` is the same switch for a release run in your own process.
"""

import os
import runpy
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from flows.warm_engine import SOCKET_VARIABLE, run_in_warm_engine


@contextmanager
def heartbeat_off() -> Iterator[None]:
    """Run flows without Prefect's heartbeat thread (a subflow inherits it)."""
    from prefect.settings import temporary_settings  # not imported by a warm engine's command

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def run_engine() -> None:
    """Prefect's engine, for the flow run the environment names (PREFECT__FLOW_RUN_ID)."""
    with heartbeat_off():
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    warm = os.environ.get(SOCKET_VARIABLE)
    exit_code = run_in_warm_engine(warm) if warm else None
    if exit_code is not None:
        sys.exit(exit_code)
    run_engine()
