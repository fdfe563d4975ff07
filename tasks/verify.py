"""verify: the new version answers — N consecutive healthy /health answers showing the
expected version within a budget — and the expected number of workers is ready."""

import time

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.environment import ReleaseEnvironment
from targets.base import Target
from targets.errors import StepFailed


@task(name="verify-api", cache_policy=NO_CACHE)
def verify_api(env: ReleaseEnvironment, base_url: str, expected_version: str) -> None:
    logger = get_run_logger()
    url = base_url.rstrip("/") + env.health_path
    deadline = time.monotonic() + env.health_budget_seconds
    streak, last = 0, "no answer yet"
    with httpx.Client(timeout=env.health_request_timeout_seconds) as client:
        while True:
            healthy, last = _probe(client, url, expected_version)
            streak = streak + 1 if healthy else 0
            if streak >= env.health_consecutive:
                logger.info(f"{url}: {streak} consecutive healthy answers from {expected_version}")
                return
            if time.monotonic() + env.health_interval_seconds > deadline:
                raise StepFailed(
                    f"API at {url} not healthy within {env.health_budget_seconds:.0f} s "
                    f"({streak}/{env.health_consecutive} consecutive healthy answers); "
                    f"last answer: {last}"
                )
            time.sleep(env.health_interval_seconds)


def _probe(client: httpx.Client, url: str, expected_version: str) -> tuple[bool, str]:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        body = {}
    version = body.get("version") if isinstance(body, dict) else None
    if response.status_code != 200:
        return False, f"HTTP {response.status_code} {response.text[:200]}"
    if version != expected_version:
        return False, f"HTTP 200 but version {version!r}, expected {expected_version!r}"
    return True, f"HTTP 200 version {version}"


@task(name="verify-workers", cache_policy=NO_CACHE)
def verify_workers(env: ReleaseEnvironment, target: Target, image: str, count: int) -> None:
    logger = get_run_logger()
    deadline = time.monotonic() + env.worker_budget_seconds
    while True:
        health = target.workers_alive(image, count)
        if health.ok:
            logger.info(f"{health.ready}/{count} worker(s) ready")
            return
        if time.monotonic() > deadline:
            raise StepFailed(
                f"only {health.ready}/{count} worker(s) ready within "
                f"{env.worker_budget_seconds:.0f} s: {health.detail or 'no detail'}"
            )
        time.sleep(1)
