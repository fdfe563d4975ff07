"""Failure injection for tests, switched on by build arguments (see the Dockerfile):

BACKEND_FAIL_MIGRATION=<revision>  that revision raises halfway through its upgrade;
BACKEND_MIGRATION_DELAY=<seconds>  each revision sleeps in the database before committing
                                   (a window to drop the migration's connection);
BACKEND_CRASH_AFTER=<seconds>      the API process exits that long after starting.
"""

import os
import sys
import threading
import time

from alembic import op

from app.settings import CRASH_AFTER, FAIL_MIGRATION, MIGRATION_DELAY


def inject_migration_faults(revision: str) -> None:
    """Delay or fail `revision` while really migrating (offline SQL rendering is left alone)."""
    if op.get_context().as_sql:
        return
    if MIGRATION_DELAY:
        op.execute(f"select pg_sleep({MIGRATION_DELAY})")
    if revision == FAIL_MIGRATION:
        raise RuntimeError(f"injected failure in migration {revision} (BACKEND_FAIL_MIGRATION)")


def crash_later_if_requested() -> None:
    """Exit the whole process CRASH_AFTER seconds from now, as a crashing API would."""
    if CRASH_AFTER < 0:
        return

    def crash() -> None:
        time.sleep(CRASH_AFTER)
        print(f"injected crash after {CRASH_AFTER} s (BACKEND_CRASH_AFTER)", file=sys.stderr)
        os._exit(3)

    threading.Thread(target=crash, daemon=True).start()
