"""Retry policy that fits the error: transient failures are retried with exponential
backoff and jitter; bad input, refused credentials and failed steps fail at once.

RELEASE_RETRY_BACKOFF_SECONDS (default 2) sets the first delay; each retry doubles it.
"""

import os

from prefect.tasks import exponential_backoff

from targets.errors import TransientError


def retry_on_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TransientError:
        return True
    except BaseException:
        return False
    return False


def transient_retries(retries: int = 3) -> dict:
    """Task options: `@task(**transient_retries())`."""
    base = float(os.environ.get("RELEASE_RETRY_BACKOFF_SECONDS", "2"))
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=base)(retries),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_on_transient,
    }
