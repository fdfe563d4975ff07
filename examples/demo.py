"""`make demo`: release examples/backend to the local Docker host and print the summary.

Runs against the local Prefect server that `scripts/local-prefect.sh up` started (its API in
PREFECT_API_URL), so that its UI shows the release afterwards. Configures a `demo`
environment from what scripts/services.sh set up (registry login and database password are
read from its state directory and stored only in Prefect blocks), registers the deployments
of prefect.yaml (whose release form then offers `demo`), and runs the release flow. Run it
again after changing the backend's code and it releases the new version; unchanged code is a
no-op.
"""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect_docker import DockerRegistryCredentials

from blocks.environment import ReleaseEnvironment, known_environments
from deployments import setup
from flows.errors import ReleaseFailed
from flows.release import release

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("RELEASE_STATE_DIR", "/var/lib/rhesis-release"))
REGISTRY = os.environ.get("RELEASE_REGISTRY_ADDR", "127.0.0.1:5000")
PG_PORT = int(os.environ.get("RELEASE_PG_PORT", "5432"))
PG_USER = os.environ.get("RELEASE_PG_USER", "release")
DATABASE = "rhesis_demo"


def secret_file(name: str) -> str:
    path = STATE / name
    if not path.is_file():
        sys.exit(f"{path} is missing: run `scripts/services.sh all` first (as root)")
    return path.read_text().strip()


def ensure_database(password: str) -> str:
    admin = f"postgresql://{PG_USER}:{password}@127.0.0.1:{PG_PORT}/{PG_USER}"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'create database "{DATABASE}"')
    return f"postgresql://{PG_USER}:{password}@127.0.0.1:{PG_PORT}/{DATABASE}"


def configure() -> None:
    ReleaseEnvironment(
        environment="demo",
        target="docker",
        image_repository=f"{REGISTRY}/rhesis/backend",
        registry_credentials=DockerRegistryCredentials(
            username="release", password=secret_file("registry/password"), registry_url=REGISTRY
        ),
        database_url=Secret(value=ensure_database(secret_file("postgres-password"))),
        api_port=8000,
        worker_count=2,
    ).save("demo", overwrite=True)


def deploy() -> None:
    """The deployments of prefect.yaml on this server, their forms offering its environments.
    A schedule whose environment has no block here (the nightly one: `staging`) is paused."""
    setup.main()
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"`prefect deploy --all` failed:\n{done.stdout}\n{done.stderr}")
    known = set(known_environments())
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        for deployment in deployments:
            environment = deployment.parameters.get("environment")
            if environment is None or environment in known:
                continue
            for schedule in deployment.schedules:
                if schedule.active:
                    client.update_deployment_schedule(deployment.id, schedule.id, active=False)
                    print(f"{deployment.name}: schedule paused (no `{environment}` block here)")
    print(f"deployments: {', '.join(sorted(d.name for d in deployments))}")


def main() -> int:
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        sys.exit("PREFECT_API_URL is not set: run `make demo`, which starts the local server")
    configure()
    deploy()
    try:
        summary = release(environment="demo", source=str(ROOT / "examples" / "backend"))
    except ReleaseFailed as exc:
        print(f"\nRELEASE FAILED: {exc}", file=sys.stderr)
        return 1
    print("\n" + "=" * 72)
    print(f"{summary['outcome'].upper()}: {summary['message']}")
    print(f"image:   {summary['image']}")
    print(f"version: {summary['previous_version'] or '-'} -> {summary['version']}")
    print(f"schema:  {summary['schema_before'] or 'base'} -> {summary['schema_after'] or 'base'}")
    for step in summary["steps"]:
        seconds = f"{step['seconds']:.1f} s" if step["seconds"] is not None else ""
        print(f"  {step['name']:<15} {seconds:>8}  {step['outcome']}")
    print(f"UI:      {api_url.removesuffix('/api')} (this run: {summary['flow_run_url']})")
    print("try:     curl -fsS http://127.0.0.1:8000/health")
    return 0


if __name__ == "__main__":
    sys.exit(main())
