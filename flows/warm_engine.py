"""A warm engine: flow-run processes forked from one that has imported Prefect and the flows
already, so a run a worker starts begins in a fraction of a second instead of the ~2.5 s
a new Python process spends importing them (measured: README, "Benchmarks").

    python -m flows.warm_engine --socket PATH     # beside the worker, same user and venv

The worker's command (`python -m flows.engine`, prefect.yaml) stays the flow-run process as
far as the worker knows: with RELEASE_WARM_ENGINE=PATH in its environment it hands its
environment, working directory and standard streams to the warm engine, which forks a
child that runs Prefect's engine exactly as `python -m flows.engine` would, and it exits
with that child's exit code. A signal it gets (the worker stopping a cancelled run) is
passed on to the child; if it is killed, the child kills itself. Without a warm engine
answering on PATH it runs the flow itself, as before (and says so on stderr).

The server forks only while it is a single thread, from a state in which it has talked to
nothing: it imports modules and waits on its socket (mode 0600: only its user connects).
Everything about a run comes from the command's environment, as for a new process;
Prefect's settings and logging are read again from it in the child.
"""

import argparse
import atexit
import importlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import NoReturn

SOCKET_VARIABLE = "RELEASE_WARM_ENGINE"
# What a flow run of these deployments imports before its flow starts (prefect.yaml), but
# flows/entry.py: its forms' schemas read the environment blocks from the server, and the
# warm engine talks to nothing (each run imports it, as a new process would).
PRELOAD = (
    "prefect.flow_engine",
    "prefect._internal.control_listener",
    "flows.release",
    "flows.fan_out",
    "flows.rollback",
    "flows.status",
)
FORWARDED = (signal.SIGTERM, signal.SIGINT)  # how a worker stops a flow-run process
STALE = "the warm engine's code is older than the flows' (it restarts): starting the run here"
_HEADER = struct.Struct("!I")  # length of the JSON request that follows


# --- the command's side (imports nothing but the standard library) ----------------------


def run_in_warm_engine(path: str) -> int | None:
    """Run this process's flow run in the warm engine at `path`: its exit code, or None
    when no warm engine runs it (nothing was started: run it here)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as exc:
        conn.close()
        print(f"no warm engine at {path} ({exc}): starting the flow run here", file=sys.stderr)
        return None
    request = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
    try:
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
    except OSError as exc:  # e.g. a standard stream this process was started without
        conn.close()
        print(f"cannot hand the run to the warm engine ({exc}): starting it here", file=sys.stderr)
        return None

    forwarded: list[int] = []

    def forward(signum, _frame) -> None:
        forwarded.append(signum)
        conn.sendall(f"signal {signum}\n".encode())

    handlers = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    with conn, conn.makefile("r") as replies:
        for line in replies:
            if line.startswith("exit "):
                return int(line.split()[1])
            if line == "fresh\n":
                for signum, handler in handlers.items():
                    signal.signal(signum, handler)
                print(STALE, file=sys.stderr)
                return None
    # The run ended without saying how: a signal ended it. End the same way, so the worker
    # sees what it would see of a process of its own.
    signum = forwarded[-1] if forwarded else signal.SIGKILL
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum


# --- the server's side --------------------------------------------------------------------


def serve(path: str) -> None:
    """Import what a flow run needs, then fork a child per connection, forever."""
    for module in PRELOAD:
        importlib.import_module(module)
    if threading.active_count() != 1:
        raise SystemExit(
            f"warm engine: importing {', '.join(PRELOAD)} started threads "
            f"({threading.enumerate()}): forking now would not be safe; run without it"
        )
    loaded = _project_sources()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        if os.path.exists(path):
            os.unlink(path)
        old_umask = os.umask(0o077)
        try:
            server.bind(path)
        finally:
            os.umask(old_umask)
        server.listen(16)
        print(f"warm engine: ready on {path} (pid {os.getpid()})", flush=True)
        while True:
            conn, _ = server.accept()
            changed = _project_sources() != loaded
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                server.close()
                _child(conn, fresh=changed)
            conn.close()
            if changed:  # the code changed since it was imported: import it again
                print("warm engine: the flows' code changed: restarting", flush=True)
                os.execv(sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]])


def _project_sources() -> dict[str, float]:
    """The modification time of each imported module of this project."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        path: os.stat(path).st_mtime
        for module in list(sys.modules.values())
        if (path := getattr(module, "__file__", None)) and path.startswith(root + os.sep)
    }


def _child(conn: socket.socket, fresh: bool) -> NoReturn:
    """Become the command's flow-run process. `fresh`: the imported code is stale, so the
    command runs the flow run itself."""
    if fresh:
        conn.sendall(b"fresh\n")
        os._exit(0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the run waits for its own children
    code, reported = 1, threading.Event()
    try:
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (length,) = _HEADER.unpack(header)
        request = json.loads(conn.recv(length, socket.MSG_WAITALL))
        run = request["env"].get("PREFECT__FLOW_RUN_ID")
        print(f"warm engine: flow run {run} in process {os.getpid()}", flush=True)
        for fd, standard in zip(fds, (0, 1, 2), strict=True):
            os.dup2(fd, standard)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        threading.Thread(target=_follow_launcher, args=(conn, reported), daemon=True).start()
        code = _run_engine()
    except BaseException:  # noqa: BLE001 - whatever happens, the command gets an exit code
        traceback.print_exc()

    def report() -> None:
        reported.set()
        conn.sendall(f"exit {code}\n".encode())

    # Exit as a new process would, so that Prefect sends the run's last log lines and
    # events (it does on interpreter exit); only then tell the command how it ended.
    atexit.register(report)
    raise SystemExit(code)


def _follow_launcher(conn: socket.socket, reported: threading.Event) -> None:
    """Take the signals the command passes on; if it is gone (killed) before this process
    reported its exit, die with it."""
    with conn.makefile("r") as messages:
        for line in messages:
            if line.startswith("signal "):
                os.kill(os.getpid(), int(line.split()[1]))
    if not reported.is_set():
        os.kill(os.getpid(), signal.SIGKILL)


def _run_engine() -> int:
    """Prefect's engine as `python -m flows.engine` runs it, with this run's settings."""
    import prefect.context
    from prefect.logging.configuration import setup_logging

    from flows.engine import run_engine

    prefect.context.refresh_global_settings_context()
    setup_logging(incremental=False)
    sys.argv = ["prefect.engine"]
    # As in a new process, where `-m prefect.engine` runs before prefect.flow_engine
    # imports it again as a module (else runpy warns that it was imported already).
    sys.modules.pop("prefect.engine", None)
    try:
        run_engine()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="where the worker's command finds it")
    serve(parser.parse_args().socket)
