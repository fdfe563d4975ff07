"""Docker host target: the API as one container, N Celery worker containers.

State is read back from the engine through container labels (no local state file).
Replacing the API stops the previous container but keeps it, renamed `<env>-api-previous`,
until the new one is verified: rolling back is a restart, not a rebuild.
"""

import itertools
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor

import docker
import docker.errors
import requests.exceptions

from targets.base import OneOffResult, Processes, ServiceState, TargetState, WorkerHealth
from targets.docker_engine import classify_engine_error
from targets.errors import ConfigurationError, ReleaseError, StepFailed

LABEL = "io.rhesis.release"
L_ENV, L_SERVICE, L_VERSION, L_IMAGE = (
    f"{LABEL}.{k}" for k in ("environment", "service", "version", "image")
)
WORKER_READY = " ready."  # Celery logs "celery@host ready." once it consumes tasks


class DockerHostTarget:
    def __init__(
        self,
        client: docker.DockerClient,
        environment: str,
        *,
        port: int = 8000,
        network: str = "host",
        publish_address: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        processes: Processes | None = None,
        volumes: list[str] | None = None,
        registry_auth: dict[str, str] | None = None,
    ):
        """`port` is where users reach the API: with host networking the API listens on it
        (told through `processes.port_variable`), otherwise `processes.api_port` is
        published on it at `publish_address`."""
        self.client = client
        self.environment = environment
        self.port = port
        self.network = network
        self.publish_address = publish_address
        self.env = dict(env or {})
        self.processes = processes or Processes()
        self.volumes = list(volumes or [])
        self.registry_auth = registry_auth
        # The previous API's graceful stop, started by deploy_api (one at a time).
        self._stopper = ThreadPoolExecutor(1, thread_name_prefix=f"{environment}-stop")
        self._retiring: Future | None = None
        fixed_port = self.processes.port_variable is None and self.processes.api_port != port
        if network == "host" and fixed_port:
            raise ConfigurationError(
                f"with host networking the API listens on its own port "
                f"{self.processes.api_port} (the application spec names no port "
                f"variable), so it cannot be reached on {port}: set api_port to "
                f"{self.processes.api_port}, or a bridge docker_network to publish it"
            )

    # -- names ---------------------------------------------------------------------------
    @property
    def api_name(self) -> str:
        return f"{self.environment}-api"

    @property
    def previous_api_name(self) -> str:
        return f"{self.environment}-api-previous"

    # -- facts ---------------------------------------------------------------------------
    def check(self) -> None:
        self._call("reach the Docker engine", self.client.ping)

    def read_state(self) -> TargetState:
        api = self._container(self.api_name)
        workers = self._workers()
        api_state = (
            ServiceState(
                image=api.labels.get(L_IMAGE),
                version=api.labels.get(L_VERSION),
                replicas=1 if api.status == "running" else 0,
                revision=api.id,
            )
            if api
            else ServiceState()
        )
        running = [w for w in workers if w.status == "running"]
        if running:
            first = running[0].labels
            worker_state = ServiceState(
                image=first.get(L_IMAGE), version=first.get(L_VERSION), replicas=len(running)
            )
        else:
            worker_state = ServiceState()
        return TargetState(api=api_state, workers=worker_state)

    def candidate_url(self) -> str:
        """The candidate replaces the API on the same port: both URLs are the same."""
        return self.service_url()

    def service_url(self) -> str:
        host = "127.0.0.1" if self.network == "host" else self.publish_address
        return f"http://{host}:{self.port}"

    def api_runs(self, image: str) -> str:
        api = self._container(self.api_name)
        if api is None or api.status != "running":
            raise StepFailed(f"no API container {self.api_name} runs")
        pinned = self._call(f"inspect {image}", self.client.images.get, image)
        if api.labels.get(L_IMAGE) != image or api.image.id != pinned.id:
            raise StepFailed(f"{self.api_name} runs {api.image.id[:19]}, not {image}")
        return f"container {self.api_name} ({api.short_id}) runs {image} ({pinned.id[:19]})"

    def workers_alive(self, image: str, count: int) -> WorkerHealth:
        workers = [w for w in self._workers() if w.labels.get(L_IMAGE) == image]
        ready, notes = 0, []
        for worker in workers:
            worker.reload()
            if worker.status != "running":
                notes.append(f"{worker.name} is {worker.status}")
                continue
            if WORKER_READY in worker.logs(tail=200).decode(errors="replace"):
                ready += 1
            else:
                notes.append(f"{worker.name} not ready yet")
        return WorkerHealth(expected=count, ready=ready, detail="; ".join(notes))

    # -- operations ----------------------------------------------------------------------
    def deploy_api(self, image: str, version: str) -> None:
        """Keep the running API as `<env>-api-previous` and stop it gracefully while the
        container of `image` is created; start that as soon as the port is free (see
        `_until_port_free`). The previous API finishes its requests while the candidate
        starts: `promote_api` and `restore_api` wait for that stop. Safe to retry: a retry
        after a half-done attempt keeps the previous container."""
        current = self._container(self.api_name)
        if current and current.labels.get(L_IMAGE) == image and current.status == "running":
            return
        if current and current.labels.get(L_IMAGE) == image:
            self._call("remove the failed candidate", current.remove, force=True)
        elif current:
            stale = self._container(self.previous_api_name)
            if stale:
                self._call("remove the API kept from an earlier release", stale.remove, force=True)
            self._call("keep the current API as previous", current.rename, self.previous_api_name)
        self._previous_stopped()  # an earlier attempt's stop, if one is under way
        self._retiring = self._stopper.submit(self._stop, self._container(self.previous_api_name))
        candidate = self._create_api(image, version)
        self._until_port_free(self._retiring)
        self._call(f"start {self.api_name}", candidate.start)

    def promote_api(self) -> None:
        self._previous_stopped()  # it finishes the requests it took first
        previous = self._container(self.previous_api_name)
        if previous:
            self._call("remove the previous API", previous.remove, force=True)

    def scale_workers(self, image: str, version: str, count: int) -> None:
        """Run `count` workers of `image`: keep those already running it, remove the others,
        then start the missing ones (the removals at once, then the starts at once)."""
        workers = self._workers()
        running = [w for w in workers if w.labels.get(L_IMAGE) == image and w.status == "running"]
        keep = running[:count]
        taken = {w.name for w in keep}
        free = (f"{self.environment}-worker-{i}" for i in itertools.count())
        names = list(itertools.islice((n for n in free if n not in taken), count - len(keep)))
        command = list(self.processes.worker_command)

        def remove(worker) -> None:
            self._call(f"remove worker {worker.name}", worker.remove, force=True)

        def start(name: str) -> None:
            self._start(name, image, version, "worker", command=command)

        with ThreadPoolExecutor(max(len(workers), count, 1)) as pool:
            list(pool.map(remove, [w for w in workers if w not in keep]))
            list(pool.map(start, names))

    def run_oneoff(
        self, image: str, command: list[str], env: dict[str, str], timeout: float
    ) -> OneOffResult:
        def run() -> OneOffResult:
            container = self.client.containers.run(
                image,
                command,
                detach=True,
                environment={**self.env, **env},
                network_mode=self.network,
                volumes=self.volumes,
                labels={L_ENV: self.environment, L_SERVICE: "oneoff"},
            )
            try:
                try:
                    status = container.wait(timeout=timeout)
                except requests.exceptions.ReadTimeout:
                    container.kill()
                    output = container.logs().decode(errors="replace")
                    return OneOffResult(124, output + f"\n(killed after {timeout:.0f} s)")
                return OneOffResult(status["StatusCode"], container.logs().decode(errors="replace"))
            finally:
                container.remove(force=True)

        self._ensure_image(image)
        return self._call(f"run {' '.join(command)} in {image}", run)

    def checks_before_push(self, built: dict[str, str]) -> bool:
        """Images are built on this engine (the environment's `docker_host`)."""
        api = self._container(self.api_name)
        return api is None or api.attrs["Image"] != built["api"]

    def restore_api(self, state: ServiceState) -> None:
        """Bring back the recorded API: restart the kept container when it is the one
        recorded, otherwise run the recorded image again. No rebuild either way."""
        self._previous_stopped()
        current = self._container(self.api_name)
        if current and current.id == state.revision and current.status == "running":
            return
        if current:
            self._call("remove the failed API", current.remove, force=True)
        previous = self._container(self.previous_api_name)
        if previous and previous.id == state.revision:
            self._call("rename the previous API back", previous.rename, self.api_name)
            if previous.status == "running":
                # A release that died while stopping it left the engine stopping it; a
                # restart waits for that stop to end, then starts it.
                self._call("restart the previous API", previous.restart, timeout=10)
            else:
                self._call("start the previous API", previous.start)
            return
        if previous:
            self._call("remove the previous API", previous.remove, force=True)
        if state.image is not None:
            self._call(
                f"start {self.api_name}",
                self._create_api(state.image, state.version or "unknown").start,
            )

    def restore_workers(self, state: ServiceState) -> None:
        if state.image is None or state.replicas == 0:
            for worker in self._workers():
                self._call(f"remove worker {worker.name}", worker.remove, force=True)
            return
        self.scale_workers(state.image, state.version or "unknown", state.replicas)

    def close(self) -> None:
        self._stopper.shutdown(wait=True)
        self.client.close()

    # -- helpers -------------------------------------------------------------------------
    def _create_api(self, image: str, version: str):
        processes = self.processes
        listens, ports = processes.api_port, None
        if self.network == "host":
            listens = self.port if processes.port_variable else processes.api_port
        else:
            ports = {f"{listens}/tcp": (self.publish_address, self.port)}
        env = {processes.port_variable: str(listens)} if processes.port_variable else {}
        command = list(processes.api_command) if processes.api_command else None
        return self._create(
            self.api_name, image, version, "api", ports=ports, env=env, command=command
        )

    def _start(self, name: str, image: str, version: str, service: str, **kwargs) -> None:
        self._call(f"start {name}", self._create(name, image, version, service, **kwargs).start)

    def _create(self, name: str, image: str, version: str, service: str, env=None, **kwargs):
        self._ensure_image(image)
        labels = {L_ENV: self.environment, L_SERVICE: service, L_VERSION: version, L_IMAGE: image}
        return self._call(
            f"create {name}",
            self.client.containers.create,
            image,
            name=name,
            labels=labels,
            environment={**self.env, "APP_ENVIRONMENT": self.environment, **(env or {})},
            network_mode=self.network,
            volumes=self.volumes,
            restart_policy={"Name": "unless-stopped"},
            **kwargs,
        )

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            self._call(
                f"pull {image}", self.client.images.pull, image, auth_config=self.registry_auth
            )

    def _stop(self, container) -> None:
        """Stop `container` (if any) gracefully: SIGTERM, then SIGKILL after 10 s."""
        if container is not None:
            self._call(f"stop {container.name}", container.stop, timeout=10)

    def _previous_stopped(self) -> None:
        """Wait for the stop deploy_api started. Its error is not raised here: the caller
        acts on the container as it finds it (promote removes it, restore restarts it)."""
        retiring, self._retiring = self._retiring, None
        if retiring is not None:
            retiring.exception()

    def _until_port_free(self, stopping: Future) -> None:
        """Wait until the previous API (being stopped by `stopping`) takes no more
        connections. With host networking that is when it closes its listening socket, the
        first thing a server does on SIGTERM (uvicorn: ~0.05 s, then ~0.35 s more finishing
        its requests and shutting down, which the candidate's start need not wait for); a
        published port is free only once its container has stopped."""
        if self.network != "host":
            stopping.result()
            return
        while not stopping.done():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except ConnectionRefusedError:
                return
            except OSError:
                pass  # busy or slow to answer: still taken
            time.sleep(0.01)
        stopping.result()

    def _container(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise classify_engine_error(exc, f"inspect container {name}") from None

    def _workers(self) -> list:
        filters = {"label": [f"{L_ENV}={self.environment}", f"{L_SERVICE}=worker"]}
        workers = self._call("list workers", self.client.containers.list, all=True, filters=filters)
        return sorted(workers, key=lambda c: c.name)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReleaseError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise classify_engine_error(exc, what) from None
