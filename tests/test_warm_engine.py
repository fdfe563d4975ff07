"""The warm engine (flows/warm_engine.py) as a worker meets it through its command
`python -m flows.engine`: the flow-run process's streams, exit code and signals are the
command's, a killed command takes its run with it, and code changed since the engine
imported it is never run. Runs through a real worker are in test_triggers.py (every run
there starts in a warm engine, and says so)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.warm_engine import SOCKET_VARIABLE, STALE
from tests.releases import wait_until
from tests.stack import REPO_ROOT, Processes

pytestmark = pytest.mark.xdist_group("warm-engine")  # one warm engine for the module

# The packages a flow run imports: a copy of them is a project whose code a test may change.
PACKAGES = ("flows", "blocks", "targets", "tasks", "ledger", "deployments")


@pytest.fixture(scope="module")
def silent_api() -> Iterator[str]:
    """A Prefect API that accepts connections and never answers: a flow run's process waits
    on it, still loading its run, for as long as a test needs it to."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/api"


def start_engine(root: Path, project: Path, api_url: str) -> tuple[Processes, str]:
    """A warm engine of the code in `project`, whose imports could not have talked to the
    server (it never answers)."""
    processes = Processes(root)
    path = str(root / "engine.sock")
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(project)}
    args = [sys.executable, "-m", "flows.warm_engine", "--socket", path]
    processes.start("engine", args, env, cwd=project)
    processes.wait_for("engine", lambda: os.path.exists(path))
    return processes, path


@pytest.fixture(scope="module")
def engine(tmp_path_factory, silent_api) -> Iterator[tuple[Processes, str]]:
    processes, path = start_engine(tmp_path_factory.mktemp("warm-engine"), REPO_ROOT, silent_api)
    yield processes, path
    processes.stop_all()


def command(path: str, api_url: str, run_id: str, project: Path = REPO_ROOT) -> subprocess.Popen:
    """The worker's command for flow run `run_id`, as prefect.yaml has it."""
    env = {
        **os.environ,
        SOCKET_VARIABLE: path,
        "PREFECT_API_URL": api_url,
        "PREFECT__FLOW_RUN_ID": run_id,
        "PYTHONPATH": str(project),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flows.engine"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def forked_process(processes: Processes, run_id: str) -> int:
    """The pid the warm engine forked for `run_id` (from its log)."""

    def logged() -> int | None:
        for line in processes.log("engine").splitlines():
            if f"flow run {run_id} in process" in line:
                return int(line.rsplit(" ", 1)[1])
        return None

    return wait_until(logged, f"the warm engine to start {run_id}", timeout=30, interval=0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_command_gets_the_runs_output_and_exit_code(engine, silent_api):
    processes, path = engine
    proc = command(path, silent_api, "not-a-flow-run-id")
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1
    assert "Invalid flow run id" in err  # Prefect's engine wrote it, on the command's stderr
    assert "starting the flow run here" not in err
    forked_process(processes, "not-a-flow-run-id")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_command_takes_its_run_with_it(engine, silent_api, how):
    processes, path = engine
    run_id = str(uuid.uuid4())
    proc = command(path, silent_api, run_id)
    run = forked_process(processes, run_id)
    assert alive(run)

    proc.send_signal(how)
    proc.wait(timeout=30)

    wait_until(lambda: not alive(run), f"the run's process {run} to end ({how.name})", timeout=10)
    assert proc.returncode == -how  # as a flow-run process of the worker's own would end


def test_code_changed_after_the_engine_imported_it_is_not_run(tmp_path, silent_api):
    project = tmp_path / "project"
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, project / package)
    processes, path = start_engine(tmp_path, project, silent_api)
    try:
        changed = project / "flows" / "status.py"  # imported by the warm engine
        changed.write_text(changed.read_text() + "\n# changed after the engine started\n")
        proc = command(path, silent_api, "not-a-flow-run-id", project)
        _, err = proc.communicate(timeout=60)

        assert STALE in err  # the command ran it itself, with the code on disk
        assert "Invalid flow run id" in err and proc.returncode == 1
        # and the engine imported the code again: the next run is forked from it
        processes.wait_for("engine", lambda: processes.log("engine").count("ready on") == 2)
        proc = command(path, silent_api, "next-run", project)
        _, err = proc.communicate(timeout=60)
        assert STALE not in err and proc.returncode == 1
        forked_process(processes, "next-run")
    finally:
        processes.stop_all()
