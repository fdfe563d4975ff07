"""The AWS emulator (moto's server, in this process) with its ECS gaps closed by real containers.

moto stores ECS clusters, task definitions and services but runs nothing: `update_service` does
not create a deployment and no task ever starts. `FakeEcsAgent` is a small ECS agent + service
scheduler working on moto's backend objects: for each service it runs the primary deployment's
task definition as REAL containers on the local Docker engine (host network; image, command,
environment and `secrets` resolved from Secrets Manager or SSM Parameter Store, a task whose
secret cannot be read stopping before it runs, as ECS's ResourceInitializationError; the
container `healthCheck` mapped to a Docker healthcheck), stops a task when its container exits
or turns unhealthy (with ECS's stopped reasons and exit codes), keeps runningCount /
deployments[] / rolloutState up to date (creating a service's new deployment as UpdateService
returns, and running the deployment circuit breaker, rollback included, when the service
enables it), and runs `run_task` one-off tasks as real containers whose exit code becomes the
container's exitCode. Output of containers with the awslogs driver is shipped to moto's
CloudWatch Logs.

moto's ListTasks ignores `serviceName`, lists every status by default and takes `startedBy`
with other filters; a WSGI layer answers as ECS does (InvalidParameterException for the last).
moto's CreateService drops `deploymentConfiguration`; a WSGI layer keeps it.

Scheduling as ECS does with minimumHealthyPercent 0 / maximumPercent 100 (what host networking
on one instance forces anyway): the old deployment's tasks stop before the new ones start.

moto's ListTaskDefinitions ignores `sort` and `maxResults`; a WSGI layer in front of moto
applies them (and `nextToken` pages) as ECS does, so "the family's latest revision" is true.

Faults are injected on the wire (a WSGI layer in front of moto): `throttle(action, times)`
answers ThrottlingException, `deny(action)` answers AccessDeniedException.

The registry gap: moto's ECR token (`AWS:123456789012-auth-token`) is accepted by the local
registry, which stands for ECR's storage. ECR's image API reads that registry: before moto answers
DescribeImages / BatchGetImage / ListImages for a repository that exists in ECR (created as a user
creates it), the images asked for (every tag when none is named) are copied from the registry with
the manifests and digests it serves, so ECR lists exactly what a push put there, and nothing else.
"""

import contextlib
import io
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import boto3
import botocore.exceptions
import docker
import docker.errors
import httpx
from moto.ecr.exceptions import ImageAlreadyExistsException
from moto.ecr.models import ecr_backends
from moto.ecs.models import Task, ecs_backends
from moto.moto_api import state_manager
from moto.server import ThreadedMotoServer
from prefect_aws import AwsClientParameters, AwsCredentials
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from moto.moto_server.werkzeug_app import (  # isort: skip
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

LABEL = "io.rhesis.fake-ecs"
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json,"
    "application/vnd.oci.image.manifest.v1+json"
)
_NS = 1_000_000_000


RELEASE_KEY_ID = "AKIAFAKEECSRELEASE"  # the key of the block under test: faults hit only it


class FaultInjection:
    """WSGI layer in front of moto: answers chosen actions with AWS error responses, for
    requests signed with the release credentials only (test setup and the agent go through)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.throttled: dict[str, int] = {}
        self.denied: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        if f"Credential={RELEASE_KEY_ID}/" not in request.headers.get("Authorization", ""):
            return self.app(environ, start_response)
        action = _action(request)
        with self.lock:
            self.calls.append(action)
            if action in self.denied or "*" in self.denied:
                fault = (
                    "AccessDeniedException",
                    f"User: arn:aws:iam::{ACCOUNT}:user/release is not authorized to perform: "
                    f"{action} because no identity-based policy allows the action",
                )
            elif self.throttled.get(action, 0) > 0:
                self.throttled[action] -= 1
                fault = ("ThrottlingException", "Rate exceeded")
            else:
                fault = None
        if fault is None:
            return self.app(environ, start_response)
        body = json.dumps({"__type": fault[0], "message": fault[1]})
        response = Response(body, status=400, content_type="application/x-amz-json-1.1")
        return response(environ, start_response)


def _action(request: Request) -> str:
    target = request.headers.get("X-Amz-Target", "")
    return target.rsplit(".", 1)[-1] if target else request.args.get("Action", "")


class RegistryBackedEcr:
    """WSGI layer in front of moto: an ECR image read first brings the images it asks about
    up to date with the registry (`mirror(repository, image_ids)`), as ECR knows what was
    pushed to it."""

    READS = {"DescribeImages", "BatchGetImage", "ListImages"}

    def __init__(self, app, mirror: Callable[[str, list[dict]], None]):
        self.app = app
        self.mirror = mirror

    def __call__(self, environ, start_response):
        request = Request(environ)
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith("AmazonEC2ContainerRegistry") and _action(request) in self.READS:
            query = _json_body(environ)
            if query.get("repositoryName"):
                self.mirror(query["repositoryName"], query.get("imageIds") or [])
        return self.app(environ, start_response)


class EcsActionLayer:
    """WSGI layer in front of moto that answers one ECS action (`ACTION`) as ECS does, in
    `answer`; every other request goes to moto as it is."""

    ACTION = ""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        request = Request(environ)
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith("AmazonEC2ContainerService") and _action(request) == self.ACTION:
            return self.answer(environ, start_response)
        return self.app(environ, start_response)

    def answer(self, environ, start_response):
        raise NotImplementedError


class TaskDefinitionListing(EcsActionLayer):
    """WSGI layer in front of moto: ListTaskDefinitions as ECS answers it. moto ignores `sort`
    and `maxResults`; ECS lists by family, then revision (ASC by default, DESC on request),
    in pages of `maxResults` (default 100) continued with `nextToken`."""

    ACTION = "ListTaskDefinitions"

    def answer(self, environ, start_response):
        query = _json_body(environ)
        answer = Response.from_app(self.app, environ)
        if answer.status_code != 200:
            return answer(environ, start_response)
        arns = json.loads(answer.get_data())["taskDefinitionArns"]
        arns.sort(key=_family_and_revision, reverse=query.get("sort") == "DESC")
        start, size = int(query.get("nextToken") or 0), query.get("maxResults") or 100
        page = {"taskDefinitionArns": arns[start : start + size]}
        if start + size < len(arns):
            page["nextToken"] = str(start + size)
        response = Response(json.dumps(page), content_type="application/x-amz-json-1.1")
        return response(environ, start_response)


class TaskListing(EcsActionLayer):
    """WSGI layer in front of moto: ListTasks as ECS answers it. ECS refuses `startedBy` with
    any other filter ("cannot specify startedBy with other arguments"; the API reference:
    "it must be the only filter that you use"), filters by `serviceName` (moto ignores it)
    and lists only tasks it wants RUNNING when no `desiredStatus` is given (moto lists all)."""

    ACTION = "ListTasks"
    OTHER_FILTERS = ("containerInstance", "family", "serviceName", "desiredStatus", "launchType")

    def answer(self, environ, start_response):
        query = _json_body(environ)
        if query.get("startedBy") and any(query.get(k) for k in self.OTHER_FILTERS):
            body = json.dumps(
                {
                    "__type": "InvalidParameterException",
                    "message": "cannot specify startedBy with other arguments",
                }
            )
            response = Response(body, status=400, content_type="application/x-amz-json-1.1")
            return response(environ, start_response)
        answer = Response.from_app(self.app, environ)
        if answer.status_code != 200:
            return answer(environ, start_response)
        tasks = {}
        for cluster_tasks in list(ecs_backends[ACCOUNT][REGION].tasks.values()):
            tasks.update(cluster_tasks)
        wanted = query.get("desiredStatus") or "RUNNING"
        service = query.get("serviceName")
        arns = [
            arn
            for arn in json.loads(answer.get_data())["taskArns"]
            if arn in tasks
            and tasks[arn].desired_status == wanted
            and (not service or tasks[arn].group == f"service:{service}")
        ]
        response = Response(
            json.dumps({"taskArns": arns}), content_type="application/x-amz-json-1.1"
        )
        return response(environ, start_response)


class ServiceCreation(EcsActionLayer):
    """WSGI layer in front of moto: CreateService keeps the service's
    `deploymentConfiguration` (circuit breaker included), as ECS does; moto keeps it only
    from UpdateService."""

    ACTION = "CreateService"

    def answer(self, environ, start_response):
        config = _json_body(environ).get("deploymentConfiguration")
        answer = Response.from_app(self.app, environ)
        if answer.status_code != 200 or not config:
            return answer(environ, start_response)
        created = json.loads(answer.get_data())
        service = created["service"]
        key = f"{service['clusterArn'].rsplit('/', 1)[-1]}:{service['serviceName']}"
        ecs_backends[ACCOUNT][REGION].services[key].deployment_configuration = config
        service["deploymentConfiguration"] = config
        response = Response(json.dumps(created), content_type="application/x-amz-json-1.1")
        return response(environ, start_response)


def _family_and_revision(arn: str) -> tuple[str, int]:
    family, revision = arn.rsplit("/", 1)[-1].rsplit(":", 1)
    return family, int(revision)


def _json_body(environ) -> dict:
    """The request's JSON body, left readable for the next layer."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    return json.loads(body or b"{}")


class _MotoServer(ThreadedMotoServer):
    """moto's threaded server behind the fault layer and the layers closing moto's gaps."""

    def __init__(self, mirror: Callable[[str, list[dict]], None]):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        moto = DomainDispatcherApplication(create_backend_app)
        listings = ServiceCreation(TaskListing(TaskDefinitionListing(moto)))
        self.faults = FaultInjection(RegistryBackedEcr(listings, mirror))

    def _server_entry(self) -> None:
        self._server = make_server(
            self._ip_address,
            self._port,
            self.faults,
            True,
            request_handler=MotoRequestHandler,
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@dataclass
class Run:
    """A task the agent runs as a real container."""

    task: Task
    container: object | None
    deployment: str | None  # None: a one-off task
    definition: dict
    health_checked: bool = False
    done: bool = False


@dataclass
class FakeEcs:
    """moto server + fake agent; `credentials()` gives an AwsCredentials block for it."""

    engine: docker.DockerClient
    registry_address: str
    registry_auth: dict[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        self.server = _MotoServer(self._mirror_registry)

    def start(self) -> "FakeEcs":
        # Tasks change state only when the agent says so (moto would advance them on reads).
        state_manager.set_transition(
            model_name="ecs::task", transition={"progression": "manual", "times": 10**9}
        )
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.agent = FakeEcsAgent(self)
        self.agent.start()
        # ECS creates a service's new deployment as UpdateService returns, not later.
        backend = ecs_backends[ACCOUNT][REGION]
        update = backend.update_service

        def update_service(properties: dict):
            service = update(properties)
            with self.agent.lock:
                self.agent.deploy(service)
            return service

        backend.update_service = update_service
        return self

    def stop(self) -> None:
        vars(ecs_backends[ACCOUNT][REGION]).pop("update_service", None)
        self.agent.stop()
        self.server.stop()

    # -- clients -----------------------------------------------------------------------------
    def credentials(self, **client_config) -> AwsCredentials:
        """An AwsCredentials block for the emulator (botocore `config` options may be given)."""
        return AwsCredentials(
            aws_access_key_id=RELEASE_KEY_ID,
            aws_secret_access_key="fake-secret-key-for-moto",
            region_name=REGION,
            aws_client_parameters=AwsClientParameters(
                endpoint_url=self.endpoint, config=client_config or None
            ),
        )

    def client(self, service: str):
        """A boto3 client for test setup and the agent (never affected by `deny`)."""
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="AKIAFAKEECSSETUP",
            aws_secret_access_key="fake-setup-key",
        )

    # -- faults --------------------------------------------------------------------------------
    def throttle(self, action: str, times: int = 1) -> None:
        with self.server.faults.lock:
            self.server.faults.throttled[action] = times

    def deny(self, action: str = "*") -> None:
        with self.server.faults.lock:
            self.server.faults.denied.add(action)

    def clear_faults(self) -> None:
        with self.server.faults.lock:
            self.server.faults.throttled.clear()
            self.server.faults.denied.clear()

    def calls(self, action: str) -> int:
        with self.server.faults.lock:
            return self.server.faults.calls.count(action)

    # -- ECR -------------------------------------------------------------------------------------
    def _mirror_registry(self, repository: str, image_ids: list[dict]) -> None:
        """Copy images of `repository` from the registry into moto's ECR (manifest and digest
        as the registry serves them): the ones asked for, or every tag when none is named.
        A repository ECR does not have stays unknown to it. (Each registry request costs a
        bcrypt check, ~0.5 s here: fetch only what the read needs.)"""
        backend = ecr_backends[ACCOUNT][REGION]
        if repository not in backend.repositories:
            return
        if not image_ids:
            listing = self._registry_get(f"{repository}/tags/list")
            if listing.status_code == 404:  # nothing pushed to this repository yet
                return
            image_ids = [{"imageTag": t} for t in listing.raise_for_status().json()["tags"] or []]
        known = {image.get_image_digest() for image in backend.repositories[repository].images}
        for image_id in image_ids:
            tag, digest = image_id.get("imageTag"), image_id.get("imageDigest")
            if tag is None and digest in known:
                continue
            manifest = self._registry_get(f"{repository}/manifests/{tag or digest}")
            if manifest.status_code == 404:  # not pushed: ECR answers ImageNotFound
                continue
            manifest.raise_for_status()
            with contextlib.suppress(ImageAlreadyExistsException):  # ECR has it already
                backend.put_image(
                    repository,
                    manifest.text,
                    tag,
                    manifest.headers["Content-Type"],
                    digest=manifest.headers["Docker-Content-Digest"],
                )

    def _registry_get(self, path: str) -> httpx.Response:
        return httpx.get(
            f"http://{self.registry_address}/v2/{path}",
            auth=(self.registry_auth["username"], self.registry_auth["password"]),
            headers={"Accept": MANIFEST_TYPES},
            timeout=10,
        )


class FakeEcsAgent(threading.Thread):
    """Reconciles moto's ECS services and one-off tasks with real containers, twice a second."""

    def __init__(self, fake: FakeEcs, interval: float = 0.5):
        super().__init__(daemon=True, name="fake-ecs-agent")
        self.fake = fake
        self.engine = fake.engine
        self.interval = interval
        self.runs: dict[str, Run] = {}
        self.errors: list[str] = []
        self.lock = threading.RLock()
        # (cluster, service): the task definition of its last COMPLETED deployment, which the
        # circuit breaker rolls back to.
        self.completed: dict[tuple[str, str], str] = {}
        # Labels this agent's containers, so its cleanup leaves other test runs' alone.
        self.owner = uuid.uuid4().hex
        self._stop_event = threading.Event()
        self.logs = fake.client("logs")
        self.secrets = fake.client("secretsmanager")
        self.ssm = fake.client("ssm")
        ec2 = fake.client("ec2")
        image = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        # The EC2 instance the local engine stands for, as a container instance of every cluster.
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
        self.instance_id = instance["InstanceId"]

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                with self.lock:
                    self.reconcile()
            except Exception as exc:  # surfaced by the fixture, never swallowed silently
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
        for run in list(self.runs.values()):
            if run.container is not None:
                _remove(run.container)
        mine = {"label": f"{LABEL}={self.owner}"}
        for container in self.engine.containers.list(all=True, filters=mine):
            _remove(container)

    # -- reconciliation ----------------------------------------------------------------------
    def reconcile(self) -> None:
        backend = ecs_backends[ACCOUNT][REGION]
        for cluster in list(backend.clusters.values()):
            if not backend.container_instances.get(cluster.name):
                # The local engine joins every cluster, so run_task (EC2) can place tasks.
                backend.register_container_instance(cluster.name, self.instance_id)
        services = [s for s in list(backend.services.values()) if s.status == "ACTIVE"]
        for service in services:
            self._reconcile_service(backend, service)
        active = {(s.cluster_name, f"service:{s.name}") for s in services}
        for run in list(self.runs.values()):
            owner = (run.task.cluster_name, run.task.group)
            if run.deployment is not None and not run.done and owner not in active:
                self._stop_task(run, "Service deleted")
        for tasks in list(backend.tasks.values()):
            for arn, task in list(tasks.items()):
                self._reconcile_oneoff(backend, arn, task)

    def deploy(self, service) -> None:
        """What UpdateService starts: a new PRIMARY deployment when the service's task
        definition changed, the desired count of the primary one."""
        if service.deployments[0]["taskDefinition"] != service.task_definition:
            self._new_deployment(service)
        service.deployments[0]["desiredCount"] = service.desired_count

    def _reconcile_service(self, backend, service) -> None:
        mine = [
            r
            for r in list(self.runs.values())
            if r.task.group == f"service:{service.name}"
            and r.task.cluster_name == service.cluster_name
        ]
        self.deploy(service)
        primary = service.deployments[0]
        for run in mine:
            if run.deployment != primary["id"] and not run.done:
                self._stop_task(run, f"Scaling activity initiated by (deployment {primary['id']})")
        # A deployment the circuit breaker failed stays listed (ACTIVE, FAILED) until the
        # rollback completes; other older deployments are gone once their tasks stopped.
        failed = [d for d in service.deployments[1:] if d["rolloutState"] == "FAILED"]
        service.deployments = (
            [primary, *failed[:1]] if primary["rolloutState"] != "COMPLETED" else [primary]
        )
        live = [r for r in mine if r.deployment == primary["id"] and not r.done]
        for run in live:
            self._check(run, primary)
        live = [r for r in live if not r.done]
        if self._circuit_breaker(service, primary):
            return
        for extra in live[service.desired_count :]:
            self._stop_task(extra, f"Scaling activity initiated by (deployment {primary['id']})")
        live = live[: service.desired_count]
        while len(live) < service.desired_count and primary["rolloutState"] != "FAILED":
            live.append(self._start_service_task(backend, service, primary))
        live = [r for r in live if not r.done]
        running = [r for r in live if r.task.last_status == "RUNNING"]
        healthy = [r for r in running if r.task.health_status != "UNKNOWN" or not r.health_checked]
        primary.update(
            runningCount=len(running),
            pendingCount=len(live) - len(running),
            updatedAt=datetime.now(UTC),
        )
        if len(healthy) == service.desired_count and primary["rolloutState"] == "IN_PROGRESS":
            primary["rolloutState"] = "COMPLETED"
            primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
        if primary["rolloutState"] == "COMPLETED":
            self.completed[(service.cluster_name, service.name)] = primary["taskDefinition"]
        service.running_count = len(running)
        service.pending_count = len(live) - len(running)

    def _circuit_breaker(self, service, primary: dict) -> bool:
        """ECS's deployment circuit breaker, when the service enables it: once the primary
        deployment has as many failed tasks as the threshold (half the desired count, at
        least 3, at most 200) its rollout FAILED and it launches no more tasks; with
        `rollback`, a new PRIMARY deployment of the last completed deployment's task
        definition replaces it. True when it tripped now."""
        config = getattr(service, "deployment_configuration", None) or {}
        breaker = config.get("deploymentCircuitBreaker") or {}
        threshold = min(max(-(-service.desired_count // 2), 3), 200)
        if not breaker.get("enable") or primary["rolloutState"] != "IN_PROGRESS":
            return False
        if primary["failedTasks"] < threshold:
            return False
        primary["rolloutState"] = "FAILED"
        primary["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
        previous = self.completed.get((service.cluster_name, service.name))
        if breaker.get("rollback") and previous and previous != primary["taskDefinition"]:
            service.task_definition = previous
            rollback = self._new_deployment(service)
            rollback["rolloutStateReason"] = (
                f"ECS deployment circuit breaker: rolling back to {previous}."
            )
        return True

    def _new_deployment(self, service) -> dict:
        now = datetime.now(UTC)
        deployment_id = f"ecs-svc/{random.randint(10**18, 10**19 - 1)}"
        deployment = {
            **service.deployments[0],
            "id": deployment_id,
            "status": "PRIMARY",
            "taskDefinition": service.task_definition,
            "desiredCount": service.desired_count,
            "runningCount": 0,
            "pendingCount": 0,
            "failedTasks": 0,
            "rolloutState": "IN_PROGRESS",
            "rolloutStateReason": f"ECS deployment {deployment_id} in progress.",
            "createdAt": now,
            "updatedAt": now,
        }
        for old in service.deployments:
            old["status"] = "ACTIVE"
        service.deployments = [deployment, *service.deployments]
        return deployment

    def _start_service_task(self, backend, service, deployment: dict) -> Run:
        definition = backend.describe_task_definition(deployment["taskDefinition"])
        task = Task(
            backend.clusters[service.cluster_name],
            definition,
            None,
            None,
            backend=backend,
            group=f"service:{service.name}",
            launch_type=service.launch_type or "EC2",
            started_by=deployment["id"],
        )
        backend.tasks.setdefault(service.cluster_name, {})[task.task_arn] = task
        run = Run(task, None, deployment["id"], definition.container_definitions[0])
        self.runs[task.task_arn] = run
        self._launch(run, {})
        return run

    def _reconcile_oneoff(self, backend, arn: str, task: Task) -> None:
        run = self.runs.get(arn)
        if run is None:
            if task.group.startswith("service:") or task.last_status == "STOPPED":
                return
            definition = backend.describe_task_definition(task.task_definition_arn)
            run = Run(task, None, None, definition.container_definitions[0])
            self.runs[arn] = run
            overrides = (task.overrides.get("containerOverrides") or [{}])[0]
            self._launch(run, overrides)
            self._release(backend, task)
            return
        if run.done or run.deployment is not None:
            return
        if task.last_status == "STOPPED":  # stop_task: moto marked it, the agent kills it
            self._stop_task(run, task.stopped_reason or "Task stopped by user", exit_code=137)
            return
        self._check(run, None)

    # -- containers --------------------------------------------------------------------------
    def _launch(self, run: Run, overrides: dict) -> None:
        definition = run.definition
        env = {e["name"]: e["value"] for e in definition.get("environment", [])}
        for secret in definition.get("secrets", []):
            try:
                env[secret["name"]] = self._secret(secret["valueFrom"])
            except botocore.exceptions.ClientError as exc:
                error = exc.response["Error"]
                store = "ssm" if ":ssm:" in secret["valueFrom"] else "asm"
                self._stop_task(
                    run,
                    "ResourceInitializationError: unable to pull secrets or registry auth: "
                    f"execution resource retrieval failed: unable to retrieve secret from "
                    f"{store}: failed to fetch secret {secret['valueFrom']}: "
                    f"{error['Code']}: {error.get('Message', '')}",
                    exit_code=None,
                )
                return
        env.update({e["name"]: e["value"] for e in overrides.get("environment", [])})
        command = overrides.get("command") or definition.get("command")
        health = definition.get("healthCheck")
        run.health_checked = bool(health)
        run.task.containers[0].exitCode = None
        try:
            self._ensure_image(definition["image"])
            run.container = self.engine.containers.run(
                definition["image"],
                command,
                entrypoint=definition.get("entryPoint"),
                environment=env,
                network_mode="host",
                labels={LABEL: self.owner, f"{LABEL}.task": run.task.task_arn},
                healthcheck=_docker_healthcheck(health) if health else None,
                detach=True,
            )
        except docker.errors.DockerException as exc:
            self._stop_task(run, f"CannotPullContainerError: {exc}", exit_code=None)
            return
        run.task.last_status = "RUNNING"
        run.task.containers[0].last_status = "RUNNING"
        run.task.health_status = "UNKNOWN"
        run.task.containers[0].health_status = "UNKNOWN"

    def _secret(self, value_from: str) -> str:
        """What the agent puts in the container for a `secrets` entry: the SSM parameter's
        (decrypted) value, or the Secrets Manager secret's string, read as ECS reads
        `arn:...:secret:NAME[:json-key:version-stage:version-id]` (a version or stage
        pinned, or the current one; a JSON key picked from the string)."""
        if value_from.startswith("arn:") and value_from.split(":")[2] == "ssm":
            name = value_from.split(":parameter", 1)[1]
            name = name if name.count("/") > 1 else name[1:]  # 'parameter/x' names 'x'
            parameter = self.ssm.get_parameter(Name=name, WithDecryption=True)
            return parameter["Parameter"]["Value"]
        parts = value_from.split(":")
        key, stage, version = (parts[7:] + ["", "", ""])[:3]
        pinned = {"VersionId": version} if version else {"VersionStage": stage or "AWSCURRENT"}
        string = self.secrets.get_secret_value(SecretId=":".join(parts[:7]), **pinned)
        return json.loads(string["SecretString"])[key] if key else string["SecretString"]

    def _check(self, run: Run, deployment: dict | None) -> None:
        try:
            run.container.reload()
        except docker.errors.NotFound:
            self._stop_task(run, "Task stopped: container removed", exit_code=137)
            return
        state = run.container.attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        if state["Status"] in ("exited", "dead"):
            self._stop_task(run, "Essential container in task exited", exit_code=state["ExitCode"])
        elif health == "unhealthy" and deployment is not None:
            self._stop_task(run, "Task failed container health checks", exit_code=137)
        else:
            # Only services stop unhealthy tasks: a task run manually "continues its lifecycle
            # regardless of its health status" (ECS docs), as a migration with no server must.
            status = {"healthy": "HEALTHY", "unhealthy": "UNHEALTHY"}.get(health, "UNKNOWN")
            run.task.health_status = run.task.containers[0].health_status = status
            return
        if deployment is not None and deployment["rolloutState"] == "IN_PROGRESS":
            deployment["failedTasks"] += 1

    def _stop_task(self, run: Run, reason: str, exit_code: int | None = 137) -> None:
        task = run.task
        if run.container is not None:
            self._ship_logs(run)
            try:
                run.container.reload()
                if run.container.attrs["State"]["Status"] in ("exited", "dead"):
                    exit_code = run.container.attrs["State"]["ExitCode"]
            except docker.errors.NotFound:
                pass
            _remove(run.container)
        task.containers[0].exitCode = exit_code
        task.containers[0].last_status = "STOPPED"
        task.last_status = "STOPPED"
        task.desired_status = "STOPPED"
        task.stopped_reason = reason
        task.stopped_at = datetime.now(UTC)
        run.done = True

    def _release(self, backend, task: Task) -> None:
        """Give back what run_task reserved on the container instance, as the agent does."""
        if task.container_instance_arn and task.resource_requirements:
            instance = backend.container_instances[task.cluster_name][
                task.container_instance_arn.split("/")[-1]
            ]
            backend.update_container_instance_resources(
                instance, task.resource_requirements, removing=True
            )

    def _ensure_image(self, image: str) -> None:
        try:
            self.engine.images.get(image)
        except docker.errors.ImageNotFound:
            self.engine.images.pull(image, auth_config=self.fake.registry_auth)

    def _ship_logs(self, run: Run) -> None:
        """The awslogs driver's job: container output to CloudWatch Logs."""
        config = run.definition.get("logConfiguration") or {}
        options = config.get("options") or {}
        if config.get("logDriver") != "awslogs":
            return
        group = options["awslogs-group"]
        stream = f"{options['awslogs-stream-prefix']}/{run.definition['name']}/"
        stream += run.task.task_arn.rsplit("/", 1)[-1]
        output = run.container.logs().decode(errors="replace").splitlines() or ["(no output)"]
        for create in (
            lambda: self.logs.create_log_group(logGroupName=group),
            lambda: self.logs.create_log_stream(logGroupName=group, logStreamName=stream),
        ):
            try:
                create()
            except botocore.exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                    raise
        stamp = int(time.time() * 1000)
        self.logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": stamp, "message": line or " "} for line in output],
        )


def _docker_healthcheck(check: dict) -> dict:
    """An ECS container healthCheck (seconds, ECS defaults) as Docker's (nanoseconds)."""
    return {
        "test": check["command"],
        "interval": int(check.get("interval", 30) * _NS),
        "timeout": int(check.get("timeout", 5) * _NS),
        "retries": check.get("retries", 3),
        "start_period": int(check.get("startPeriod", 0) * _NS),
    }


def _remove(container) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)
