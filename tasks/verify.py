"""verify: the new version answers — N consecutive healthy answers of the health endpoint,
each showing the expected version, the first of them within a budget (after the
application's start period) — and the expected number of workers is ready.

Budgets stretch with the load on the machine running the release (a Docker-host target
starts its containers on it), read again at every probe: eight releases at once on 2 CPUs
start slower than one, and the load rises while they do. A streak of healthy answers under
way when the budget ends may finish; one unhealthy answer after it ends fails.

Where the health answer shows no version (application spec `health.version_source`
'none'), the answers must be healthy and the platform must show that the API runs the
expected image: the container of the pinned digest, the tagged revision, the new task
definition. The log says which proof was used."""

import os
import time

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.application import Health
from blocks.environment import ReleaseEnvironment
from targets.base import Target
from targets.errors import StepFailed

FIRST_PROBES_SECONDS = 0.1  # between probes of an API that does not answer yet
# Between looks at the workers (each a few reads of the platform's API): often while they
# are most likely still starting, so their readiness is seen when it comes, then once a second.
WORKER_LOOKS_SECONDS = 0.25
WORKER_LOOKS_OFTEN_FOR_SECONDS = 5.0


@task(name="verify-api", cache_policy=NO_CACHE)
def verify_api(
    env: ReleaseEnvironment, target: Target, url: str, *, version: str | None, image: str | None
) -> None:
    logger = get_run_logger()
    health = env.application.health
    url = url.rstrip("/") + health.path
    budget = Budget(health.start_period_seconds + env.health_budget_seconds, logger)
    streak, last = 0, "no answer yet"
    # A target whose URLs require authentication (a private Cloud Run service) says how.
    headers = target.request_headers(url) if hasattr(target, "request_headers") else {}
    with httpx.Client(timeout=env.health_request_timeout_seconds, headers=headers) as client:
        while True:
            healthy, last = _probe(client, url, health, version)
            streak = streak + 1 if healthy else 0
            if streak >= env.health_consecutive:
                break
            # Probe quickly while the API does not answer at all (it is starting); space
            # the confirmations and the probes of an API that answers unhealthy.
            starting = not healthy and not last.startswith("HTTP")
            pause = FIRST_PROBES_SECONDS if starting else env.health_interval_seconds
            if not streak and budget.spent(pause):
                raise StepFailed(
                    f"API at {url} not healthy within {budget.seconds:.0f} s "
                    f"({streak}/{env.health_consecutive} consecutive healthy answers); "
                    f"last answer: {last}"
                )
            time.sleep(pause)
    if health.version_source == "none" and image is not None:
        proof = target.api_runs(image)
        logger.info(
            f"{url}: {streak} consecutive healthy answers; the health answer shows no version "
            f"(health.version_source='none'), so the platform's word stands for it: {proof}"
        )
    else:
        logger.info(f"{url}: {streak} consecutive healthy answers from {version}")


class Budget:
    """`seconds` from now, stretched by the load per CPU of this machine when above 1,
    read again at each `spent` (the stretch never shrinks)."""

    def __init__(self, seconds: float, logger):
        self.base, self.logger = seconds, logger
        self.started = time.monotonic()
        self.stretch = self.told = 1.0

    @property
    def seconds(self) -> float:
        return self.base * self.stretch

    def spent(self, before_next: float = 0.0) -> bool:
        """Whether the budget would be spent `before_next` seconds from now."""
        cpus = os.cpu_count() or 1
        load = os.getloadavg()[0]
        self.stretch = max(self.stretch, load / cpus)
        if self.stretch >= 1.25 * self.told:  # said when it has grown by a quarter
            self.told = self.stretch
            self.logger.info(
                f"this machine is busy (load {load:.1f} on {cpus} CPUs): budget "
                f"{self.base:.0f} s x{self.stretch:.1f}"
            )
        return time.monotonic() + before_next > self.started + self.seconds


def _probe(
    client: httpx.Client, url: str, health: Health, expected: str | None
) -> tuple[bool, str]:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return False, f"HTTP {response.status_code} {response.text[:200]}"
    if health.version_source == "none":
        return True, "HTTP 200"
    version = _version(response, health)
    if version != expected:
        where = "header" if health.version_source == "header" else "field"
        return False, (
            f"HTTP 200 but version {version!r} ({where} {health.version_key!r}), "
            f"expected {expected!r}"
        )
    return True, f"HTTP 200 version {version}"


def _version(response: httpx.Response, health: Health) -> str | None:
    if health.version_source == "header":
        return response.headers.get(health.version_key)
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(health.version_key) if isinstance(body, dict) else None


@task(name="verify-workers", cache_policy=NO_CACHE)
def verify_workers(env: ReleaseEnvironment, target: Target, image: str, count: int) -> None:
    logger = get_run_logger()
    budget = Budget(env.worker_budget_seconds, logger)
    while True:
        health = target.workers_alive(image, count)
        if health.ok:
            logger.info(f"{health.ready}/{count} worker(s) ready")
            return
        if budget.spent():
            raise StepFailed(
                f"only {health.ready}/{count} worker(s) ready within {budget.seconds:.0f} s: "
                f"{health.detail or 'no detail'}"
            )
        often = time.monotonic() - budget.started < WORKER_LOOKS_OFTEN_FOR_SECONDS
        time.sleep(WORKER_LOOKS_SECONDS if often else 1.0)
