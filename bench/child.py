"""One release in its own process, for the scale figure (as a worker runs each flow run in
its own process). It imports everything first, prints "ready", waits for a line on stdin,
then releases, so the parent times the releases and not the interpreters starting:

    python -m bench.child ENVIRONMENT SOURCE VERSION
"""

import os
import sys

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")

from flows.release import release  # noqa: E402


def main() -> None:
    environment, source, version = sys.argv[1:]
    print("ready", flush=True)
    sys.stdin.readline()
    release(environment, source=source, version=version)


if __name__ == "__main__":
    main()
