"""A real Prefect stack on loopback, shared by the trigger, UI, bridge and docker-pool tests
and bench/run.py: `prefect server start` (SQLite under a temporary home, or PostgreSQL) set
up and deployed from prefect.yaml or prefect.docker.yaml, workers polling every second
(process or docker), the event bridge, and a second real docker-registry (same users as the
main one) whose push notifications go to the bridge; the background processes can be
killed, stopped and restarted as a supervisor would; and the runs of the deployments."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.warm_engine import SOCKET_VARIABLE
from tests import services
from tests.releases import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
REGISTRY_STATE = services.STATE_DIR / "registry"


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    root: Path
    token: str = field(repr=False)  # never in test output
    prefix: str  # makes the environments' container names unique to this stack
    bridge_url: str

    def client(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.api_url)

    @contextmanager
    def settings(self) -> Iterator[None]:
        """Point in-process Prefect calls (block saves, flows) at this server."""
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield


class Processes:
    """Background processes started here, each with its own log file under `root`."""

    def __init__(self, root: Path):
        self.root, self.started = root, []
        self.commands: dict[str, tuple[list[str], dict[str, str], Path]] = {}

    def start(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT
    ) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((name, proc, log))
        self.commands[name] = (args, env, cwd)
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL the newest process called `name`."""
        proc = self._newest(name)
        proc.kill()
        proc.wait()

    def stop(self, name: str, grace: float = 15) -> None:
        """Stop the newest process called `name` as a supervisor does: SIGTERM, then SIGKILL
        after `grace` seconds."""
        _stop(self._newest(name), grace)

    def _newest(self, name: str) -> subprocess.Popen:
        return next(p for n, p, _ in reversed(self.started) if n == name)

    def restart(self, name: str) -> subprocess.Popen:
        """Start `name` again, as it was started (its log goes on in the same file)."""
        return self.start(name, *self.commands[name])

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_http(self, name: str, url: str, ok: tuple[int, ...] = (200,)) -> None:
        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code in ok
            except httpx.HTTPError:
                return False

        self.wait_for(name, answers, f"did not answer on {url}", every=0.3)

    def wait_for(
        self,
        name: str,
        ready: Callable[[], bool],
        failure: str = "is not ready",
        every: float = 0.1,
    ) -> None:
        """Until `ready()`, asked `every` seconds while the newest `name` runs (at most
        180 s: a busy 2-CPU machine starts a server slowly)."""
        proc = self._newest(name)
        deadline = time.monotonic() + 180
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} {failure}:\n{self.log(name)[-3000:]}")
            time.sleep(every)

    def stop_all(self) -> None:
        for _, proc, log in reversed(self.started):
            _stop(proc)
            log.close()


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def start_server(
    processes: Processes,
    root: Path,
    database_url: str | None = None,
    ui: bool = False,
    deployed: bool = True,
) -> Stack:
    """`prefect server start` on a free loopback port, set up and deployed from prefect.yaml
    (`deployed=False`: call `deploy` once the environment blocks the forms offer exist).
    Its database: SQLite under `root`, or `database_url` (postgresql+asyncpg://...); `ui`
    serves the Prefect UI too, calling this server's API."""
    port = services.free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        PREFECT_HOME=str(root / "home"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED=str(ui).lower(),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    database = database_url or f"sqlite+aiosqlite:///{root / 'prefect.db'}"
    processes.start(
        "server",
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": database},
    )
    processes.wait_http("server", f"{api_url}/health")
    stack = Stack(
        api_url,
        env,
        root,
        token=uuid.uuid4().hex,
        prefix=f"trg{uuid.uuid4().hex[:6]}",
        bridge_url=f"http://127.0.0.1:{services.free_port()}",
    )
    if deployed:
        deploy(stack)
    return stack


def deploy(stack: Stack, prefect_file: str = "prefect.yaml", **env: str) -> str:
    """Set the server up (work pools, a release slot per environment block) and deploy
    `prefect_file`, as the README says: after the environment blocks are saved. `env`: more
    environment variables for `prefect deploy` (e.g. RELEASE_FLOWS_IMAGE); its output."""
    run([sys.executable, "-m", "deployments.setup"], stack.env)
    deploy_all = ["--no-prompt", "deploy", "--all", "--prefect-file", prefect_file]
    return run([str(VENV_BIN / "prefect"), *deploy_all], {**stack.env, **env})


def start_registry(processes: Processes, stack: Stack) -> str:
    """A second real docker-registry (same users) that notifies the bridge; its address."""
    port = services.free_port()
    directory = stack.root / "registry"
    directory.mkdir()
    shutil.copy(REGISTRY_STATE / "htpasswd", directory / "htpasswd")
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(directory / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {"htpasswd": {"realm": "triggers", "path": str(directory / "htpasswd")}},
        "notifications": {
            "endpoints": [
                {
                    "name": "event-bridge",
                    "url": f"{stack.bridge_url}/registry",
                    "headers": {"Authorization": [f"Bearer {stack.token}"]},
                    "timeout": "5s",
                    "threshold": 3,
                    "backoff": "1s",
                }
            ]
        },
    }
    (directory / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    (directory / "config.yml").chmod(0o600)
    processes.start("registry", ["docker-registry", "serve", str(directory / "config.yml")], {})
    processes.wait_http("registry", f"http://127.0.0.1:{port}/v2/", ok=(401,))
    return f"127.0.0.1:{port}"


def start_bridge(
    processes: Processes,
    stack: Stack,
    route: str | None,
    name: str = "bridge",
    save_token: bool = True,
) -> str:
    """The event bridge on `stack.bridge_url`, its record of delivered pushes under the
    stack's root. `route` is its one --route; None: routes from the environment blocks.
    `save_token` first saves the token block (needs the server up)."""
    if save_token:
        with stack.settings():
            Secret(value=stack.token).save("event-bridge-token", overwrite=True)
    port = stack.bridge_url.rsplit(":", 1)[1]
    routes = ["--route", route] if route else []
    state = ["--state-dir", str(stack.root / "event-bridge")]
    processes.start(
        name,
        [sys.executable, "-m", "deployments.event_bridge", "--port", port, *state, *routes],
        stack.env,
    )
    processes.wait_http(name, f"{stack.bridge_url}/health")
    return stack.bridge_url


def start_worker(
    processes: Processes,
    stack: Stack,
    pool: str = "release",
    name: str = "worker",
    *options,
    warm: bool = True,
) -> None:
    """A worker of `pool` called `name` (its process and log name too), with `options` of
    `prefect worker start`; `warm`: its flow runs are forked from a warm engine
    (flows/warm_engine.py, process `<name>-engine`), as the README sets a worker up."""
    env = stack.env
    if warm:
        path = str(stack.root / f"{name}-engine.sock")
        engine = [sys.executable, "-m", "flows.warm_engine", "--socket", path]
        processes.start(f"{name}-engine", engine, stack.env)
        processes.wait_for(f"{name}-engine", lambda: os.path.exists(path))
        env = {**stack.env, SOCKET_VARIABLE: path}
    args = ["worker", "start", "--pool", pool, "--name", name, *options]
    processes.start(name, [str(VENV_BIN / "prefect"), *args], env)


# --- runs of the stack's deployments ------------------------------------------------------

RUN_TIMEOUT = 120


def deployment_id(stack: Stack, name: str) -> uuid.UUID:
    with stack.client() as client:
        return client.read_deployment_by_name(name).id


def runs_of(stack: Stack, name: str) -> list[FlowRun]:
    with stack.client() as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment_id(stack, name)])
            )
        )


def start(stack: Stack, name: str, **parameters) -> FlowRun:
    with stack.client() as client:
        return client.create_flow_run_from_deployment(
            deployment_id(stack, name), parameters=parameters
        )


def finished(stack: Stack, run_id: uuid.UUID) -> FlowRun:
    def check():
        with stack.client() as client:
            flow_run = client.read_flow_run(run_id)
        return flow_run if flow_run.state and flow_run.state.is_final() else None

    return wait_until(check, f"flow run {run_id} to finish", RUN_TIMEOUT)


def subflows(stack: Stack, run_id: uuid.UUID) -> list[FlowRun]:
    with stack.client() as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
            )
        )


def logs(stack: Stack, *run_ids: uuid.UUID) -> str:
    with stack.client() as client:
        entries = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(run_ids))))
    return "\n".join(entry.message for entry in entries)


def completed(stack: Stack, flow_run: FlowRun) -> FlowRun:
    done = finished(stack, flow_run.id)
    children = [c.id for c in subflows(stack, flow_run.id)]
    assert done.state.is_completed(), (
        f"{done.name}: {done.state.name} {done.state.message}\n{logs(stack, done.id, *children)}"
    )
    return done
