"""The scale figure's release, in its own process as a worker runs each flow run: one
`release-to-many` run (flows/fan_out.py) of one code change to the environments named. It
imports everything first, prints "ready", waits for a line on stdin, then releases, so the
parent times the release and not the interpreter starting:

    python -m bench.child SOURCE VERSION ENVIRONMENT...
"""

import os
import sys

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")

from flows.engine import heartbeat_off  # noqa: E402
from flows.fan_out import release_to_many  # noqa: E402


def main() -> None:
    source, version, *environments = sys.argv[1:]
    print("ready", flush=True)
    sys.stdin.readline()
    with heartbeat_off():  # as the deployments' flow-run processes run (flows/engine.py)
        release_to_many(environments, source=source, version=version)


if __name__ == "__main__":
    main()
