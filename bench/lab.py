"""The bench's environments on the local services: each flow environment and each script
environment has its own database, API port and container names. Everything created here
(containers, databases, image tags) is removed by `clean()`."""

import contextlib
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from blocks.environment import ReleaseEnvironment
from flows.engine import heartbeat_off
from flows.errors import ReleaseFailed
from flows.release import release
from targets.build import buildkit_cli
from tests.backend import TEST_REPOSITORY, backend_context
from tests.releases import local_environment, remove_containers
from tests.services import free_port

BASELINE = Path(__file__).with_name("baseline.sh")
WORKERS = 2
HEALTH_INTERVAL = 0.5


@dataclass(frozen=True)
class ScriptEnvironment:
    name: str
    database_url: str
    port: int


class Lab:
    def __init__(self, root: Path, pg, registry, engine):
        self.root, self.pg, self.registry, self.engine = root, pg, registry, engine
        self.prefix = f"bench{uuid.uuid4().hex[:4]}"
        self.databases: list[str] = []
        self.flow_names: list[str] = []
        self.script_names: list[str] = []
        self.images: set[str] = set()
        self.contexts: dict[tuple, Path] = {}

    def database(self) -> str:
        self.databases.append(self.pg.create_database())
        return self.databases[-1]

    def flow_environment(self, name: str, **overrides) -> ReleaseEnvironment:
        """A Docker-host environment saved as a block named like its environment."""
        fields = dict(
            environment=f"{self.prefix}-{name}",
            worker_count=WORKERS,
            health_interval_seconds=HEALTH_INTERVAL,
        )
        env = local_environment(self.pg, self.registry, self.database(), **{**fields, **overrides})
        env.save(env.environment, overwrite=True)
        self.flow_names.append(env.environment)
        return env

    def script_environment(self, name: str) -> ScriptEnvironment:
        env = ScriptEnvironment(f"{self.prefix}-{name}", self.pg.url(self.database()), free_port())
        self.script_names.append(env.name)
        return env

    def context(self, version: str, head: str = "0003", **faults: str) -> Path:
        """The backend after a code change (a file that names `version`); the same
        directory again for the same arguments, so a re-release is of the same code."""
        key = (version, head, tuple(sorted(faults.items())))
        if key not in self.contexts:
            change = {"app/bench_change.py": f"CHANGE = {version!r}\n"}
            self.contexts[key] = backend_context(self.root / version, head, change, **faults)
            self.images.add(f"{TEST_REPOSITORY}:{version}")
        return self.contexts[key]

    def flow(self, env: ReleaseEnvironment, version: str, **context) -> tuple[float, dict]:
        """Release with the flow; (wall seconds, its summary). A failed release raises."""
        source = str(self.context(version, **context))
        started = time.perf_counter()
        with heartbeat_off():  # as the deployments' flow-run processes run (flows/engine.py)
            summary = release(env.environment, source=source, version=version)
        return time.perf_counter() - started, summary

    def failed_flow(self, env: ReleaseEnvironment, version: str, **context) -> None:
        """Release what must fail verification and be rolled back."""
        try:
            self.flow(env, version, **context)
        except ReleaseFailed as exc:
            if "Rolled back and verified" not in str(exc):
                raise
            return
        raise RuntimeError(f"the release of {version} to {env.environment} did not fail")

    def script(self, env: ScriptEnvironment, version: str) -> float:
        """Release with bench/baseline.sh; its wall seconds."""
        source = self.context(version)
        secrets = {"DATABASE_URL": env.database_url, "REGISTRY_PASSWORD": self.registry.password}
        settings = {
            "DOCKER_CLI": buildkit_cli()[0],
            "IMAGE_REPOSITORY": TEST_REPOSITORY,
            "REGISTRY_USER": self.registry.username,
            "API_PORT": str(env.port),
            "WORKERS": str(WORKERS),
            "HEALTH_INTERVAL": str(HEALTH_INTERVAL),
        }
        started = time.perf_counter()
        proc = subprocess.run(
            [str(BASELINE), env.name, str(source), version],
            env={**os.environ, **settings, **secrets},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"baseline.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return seconds

    def clean(self) -> None:
        for name in self.flow_names:
            remove_containers(self.engine, name)
        for name in self.script_names:
            for container in self.engine.containers.list(all=True, filters={"name": f"^{name}-"}):
                container.remove(force=True)
        for database in self.databases:
            self.pg.drop_database(database)
        for image in self.images:
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.engine.images.remove(image, force=True)
