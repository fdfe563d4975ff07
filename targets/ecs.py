"""AWS ECS target: the API and the workers are two ECS services of one task-definition family
shape; a release registers a clone of a service's task definition with the image and the
version label changed (and the application spec's plain variables and command set, and the
environment's secret variables as `secrets` references to Secrets Manager; other secrets,
ports, health check and logging stay the task definition's), points the service at it and
watches the rollout itself.

The rollout is watched here rather than with boto3 waiters: waiters built from a session ignore
a custom endpoint, and `services_stable` cannot see a failed rollout. A rollout is done when the
primary deployment runs the new revision at the desired count and is the only deployment left;
it failed when tasks of that deployment keep stopping (our threshold; none of our own when the
service's deployment circuit breaker is on and `failed_tasks_threshold` is unset), when ECS marks
the deployment FAILED, when another task definition's deployment becomes PRIMARY (the breaker's
rollback), or when the deadline passes. ListTasks takes `startedBy` only as its sole filter: a
deployment's stopped tasks are the service's, picked by `startedBy`. botocore retries
throttling and 5xx itself (with backoff and jitter); what still fails is raised as
TransientError so the tasks layer can retry the step.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from targets.base import OneOffResult, ServiceState, TargetState, WorkerHealth
from targets.errors import (
    AuthenticationError,
    ConfigurationError,
    ReleaseError,
    StepFailed,
    TransientError,
)

DEFAULT_VERSION_LABEL = "io.rhesis.release.version"
ONEOFF_STARTED_BY = "rhesis-release"
# Fields of describe_task_definition that register_task_definition accepts back.
_REGISTRABLE = (
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "containerDefinitions",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "pidMode",
    "ipcMode",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
)
_TRANSIENT_CODES = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
}
_AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
}
_SCALE_IN = "Scaling activity initiated"  # ECS's reason for tasks it stops on purpose


@dataclass(frozen=True)
class RolloutPolicy:
    deadline_seconds: float = 600.0
    poll_seconds: float = 5.0
    # Stopped tasks of the new deployment that fail the rollout; None: ECS's circuit-breaker
    # rule, half the desired count, at least 3 and at most 200.
    failed_tasks_threshold: int | None = None

    def threshold(self, desired: int) -> int:
        if self.failed_tasks_threshold is not None:
            return self.failed_tasks_threshold
        return min(max(desired // 2, 3), 200)


def classify_aws_error(exc: Exception, what: str) -> ReleaseError:
    """The error class that says how to react to a botocore error."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ConfigurationError(
            f"{what}: no AWS credentials found: set the access key in the AwsCredentials block"
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        message = error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _AUTH_CODES or status == 403:
            return AuthenticationError(
                f"{what}: AWS refused the request ({code}: {message}); grant the IAM "
                "permission or fix the keys in the AwsCredentials block"
            )
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(f"{what}: AWS answered {code or status} ({message})")
        if code == "ClusterNotFoundException":
            return ConfigurationError(
                f"{what}: cluster not found ({message}): create it or fix `cluster` "
                "in the ECS settings block (and check the region)"
            )
        if code in ("ServiceNotFoundException", "ServiceNotActiveException"):
            return ConfigurationError(
                f"{what}: service not found or not active ({message}): create it or fix "
                "`api_service` / `worker_service` in the ECS settings block"
            )
        return StepFailed(f"{what}: AWS rejected the request ({code}: {message})")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        # Connection refused/reset, timeouts, and retries exhausted: worth another try.
        return TransientError(f"{what}: {exc}")
    return StepFailed(f"{what}: {exc}")


# How many of a family's latest revisions are searched for one to reuse.
REUSE_WINDOW = 5


class EcsTarget:
    def __init__(
        self,
        ecs,
        *,
        logs,
        cluster: str,
        api_service: str,
        worker_service: str,
        container_name: str,
        api_url: str,
        version_label: str = DEFAULT_VERSION_LABEL,
        rollout: RolloutPolicy | None = None,
        oneoff_env: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        api_command: tuple[str, ...] | None = None,
        worker_command: tuple[str, ...] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`ecs` and CloudWatch `logs` are boto3 clients (one-off output is read with
        logs:GetLogEvents). `oneoff_env` fills the environment of one-off tasks for names
        the task definition does not define itself.
        `env` (plain values only: the environment's env file and `env`) is set in the
        container of every revision a release registers for the API and the workers,
        replacing variables of the same name; `secrets` (name -> Secrets Manager or SSM
        parameter ARN) become the container's `secrets` (valueFrom) in every revision a
        release registers, the one-off tasks' included: ECS reads the values when a task
        starts, and no value is ever written here; `api_command` / `worker_command` (None: the
        task definition's own) become the container's `command`. Everything else, secrets
        included, stays as the services' task definitions have it."""
        self.ecs = ecs
        self.logs = logs
        self.cluster = cluster
        self.api_service = api_service
        self.worker_service = worker_service
        self.container_name = container_name
        self.api_url = api_url.rstrip("/")
        self.version_label = version_label
        self.rollout = rollout or RolloutPolicy()
        self.oneoff_env = dict(oneoff_env or {})
        self.env = dict(env or {})
        self.secrets = dict(secrets or {})
        self.api_command = api_command
        self.worker_command = worker_command
        self._sleep = sleep
        self._clock = clock

    # -- facts ---------------------------------------------------------------------------
    def check(self) -> None:
        clusters = self._call(
            "describe cluster", self.ecs.describe_clusters, clusters=[self.cluster]
        )
        active = [c for c in clusters.get("clusters", []) if c.get("status") == "ACTIVE"]
        if not active:
            raise ConfigurationError(
                f"ECS cluster {self.cluster!r} not found (or not active) in this account and "
                "region: create it or fix `cluster` / the region in the ECS settings block"
            )
        for name in (self.api_service, self.worker_service):
            service = self._service(name)
            container = self._container(self._task_definition(service["taskDefinition"]), name)
            if both := sorted({s["name"] for s in container.get("secrets", [])} & set(self.env)):
                raise ConfigurationError(
                    f"{', '.join(both)}: a secret of service {name!r}'s task definition "
                    f"({service['taskDefinition']}) and a plain variable of the environment "
                    "(`env` or `env_file`): give each variable one source (remove it from the "
                    "environment, or from the task definition's secrets)"
                )

    def read_state(self) -> TargetState:
        return TargetState(
            api=self._service_state(self.api_service),
            workers=self._service_state(self.worker_service),
        )

    def candidate_url(self) -> str:
        """The load balancer's URL: a rolling update has no separate candidate address."""
        return self.api_url

    def service_url(self) -> str:
        return self.api_url

    def api_runs(self, image: str) -> str:
        primary = _primary(self._service(self.api_service))
        definition = self._task_definition(primary["taskDefinition"])
        running = self._container(definition, self.api_service).get("image")
        if running != image:
            raise StepFailed(f"service {self.api_service!r} runs {running}, not {image}")
        return f"service {self.api_service!r} runs {image} ({primary['taskDefinition']})"

    def workers_alive(self, image: str, count: int) -> WorkerHealth:
        service = self._service(self.worker_service)
        primary = _primary(service)
        revision = self._task_definition(primary["taskDefinition"])
        running_image = self._container(revision, self.worker_service).get("image")
        if running_image != image:
            return WorkerHealth(count, 0, f"workers run {running_image}, not {image}")
        tasks = self._running_tasks(primary["id"])
        ready = [
            t
            for t in tasks
            if t.get("lastStatus") == "RUNNING" and t.get("healthStatus") != "UNHEALTHY"
        ]
        detail = f"{len(ready)} of {count} worker tasks running ({len(tasks)} wanted running)"
        return WorkerHealth(expected=count, ready=len(ready), detail=detail)

    # -- operations ----------------------------------------------------------------------
    def deploy_api(self, image: str, version: str) -> None:
        service = self._service(self.api_service)
        revision = self._revision_with(
            service["taskDefinition"], image, version, command=self.api_command
        )
        self._update(self.api_service, revision, service["desiredCount"])

    def promote_api(self) -> None:
        """Nothing to do: ECS's rolling update already replaced the previous tasks and the
        load balancer serves the new ones; the previous revision stays registered for rollback."""

    def scale_workers(self, image: str, version: str, count: int) -> None:
        service = self._service(self.worker_service)
        revision = self._revision_with(
            service["taskDefinition"], image, version, command=self.worker_command
        )
        self._update(self.worker_service, revision, count)

    def checks_before_push(self, built: dict[str, str]) -> bool:
        """One-offs run in the cloud, from the registry: only a pushed image can be checked."""
        return False

    def run_oneoff(
        self, image: str, command: list[str], env: dict[str, str], timeout: float
    ) -> OneOffResult:
        """`run_task` of a revision running `image` with the command overridden; waits for
        STOPPED and returns the container's exit code and its CloudWatch log (awslogs driver;
        without it, why there is no output), then the stopped reason."""
        service = self._service(self.api_service)
        # A variable passed here that the task definition holds as a secret is removed from
        # the one-off revision: which of an override and a secret wins must not be left to
        # ECS when a rehearsal points DATABASE_URL at a scratch database.
        current = self._container(
            self._task_definition(service["taskDefinition"]), self.api_service
        )
        secrets = ({s["name"] for s in current.get("secrets", [])} | set(self.secrets)) & set(env)
        revision = self._revision_with(
            service["taskDefinition"], image, version=None, unset=frozenset(secrets)
        )
        definition = self._task_definition(revision)
        container = self._container(definition, self.api_service)
        defined = {e["name"] for e in container.get("environment", [])}
        defined |= {s["name"] for s in container.get("secrets", [])}
        overrides = {k: v for k, v in self.oneoff_env.items() if k not in defined}
        overrides.update(env)
        placement = {
            key: service[key]
            for key in ("launchType", "capacityProviderStrategy", "networkConfiguration")
            if service.get(key)
        }
        what = f"run {' '.join(command)} as a one-off task of {revision}"
        started = self._call(
            what,
            self.ecs.run_task,
            cluster=self.cluster,
            taskDefinition=revision,
            count=1,
            startedBy=ONEOFF_STARTED_BY,
            overrides={
                "containerOverrides": [
                    {
                        "name": self.container_name,
                        "command": command,
                        "environment": [{"name": k, "value": v} for k, v in overrides.items()],
                    }
                ]
            },
            **placement,
        )
        if not started.get("tasks"):
            reasons = "; ".join(f.get("reason", "?") for f in started.get("failures", []))
            raise StepFailed(f"{what}: ECS started no task ({reasons or 'no reason given'})")
        task_arn = started["tasks"][0]["taskArn"]
        task, timed_out = self._wait_stopped(task_arn, timeout)
        task_container = next(
            (c for c in task.get("containers", []) if c.get("name") == self.container_name), {}
        )
        # 125, as `docker run` uses, when the container never ran (e.g. image pull failed).
        exit_code = 124 if timed_out else task_container.get("exitCode", 125)
        stopped = f"task stopped: {task.get('stoppedReason') or 'no reason given'}"
        if task_container.get("reason"):
            stopped += f" (container: {task_container['reason']})"
        logs = self._task_logs(container, task_arn)
        return OneOffResult(exit_code, f"{logs}\n{stopped}" if logs else stopped)

    def restore_api(self, state: ServiceState) -> None:
        self._restore(self.api_service, state)

    def restore_workers(self, state: ServiceState) -> None:
        self._restore(self.worker_service, state)

    def close(self) -> None:
        self.ecs.close()
        self.logs.close()

    # -- task definitions ------------------------------------------------------------------
    def _revision_with(
        self,
        current_arn: str,
        image: str,
        version: str | None,
        unset: frozenset[str] = frozenset(),
        command: tuple[str, ...] | None = None,
    ) -> str:
        """ARN of a revision equal to `current_arn` but for image and version label (and the
        `unset` secrets; for a service, version given, the plain `env` and `command`): the
        current one when it already matches, one of the family's latest revisions when that
        is the same clone (a retried step or a second one-off registers nothing new), else a
        newly registered revision."""
        current = self._task_definition(current_arn)
        wanted = self._clone(current, image, version, unset, command)
        if _registrable(current) == wanted:
            return current_arn
        latest = self._call(
            "list task-definition revisions",
            self.ecs.list_task_definitions,
            familyPrefix=current["family"],
            sort="DESC",
            maxResults=REUSE_WINDOW,
        )["taskDefinitionArns"]
        for arn in latest:
            if arn != current_arn and _registrable(self._task_definition(arn)) == wanted:
                return arn
        registered = self._call(
            f"register a revision of {current['family']} with {image}",
            self.ecs.register_task_definition,
            **wanted,
        )
        return registered["taskDefinition"]["taskDefinitionArn"]

    def _clone(
        self,
        definition: dict,
        image: str,
        version: str | None,
        unset: frozenset[str],
        command: tuple[str, ...] | None = None,
    ) -> dict:
        """The registrable fields of `definition` with only the image and version changed
        (a one-off revision, version None, carries no version label and keeps the task
        definition's environment) and the `unset` variables removed from the container's
        environment and secrets; a service's revision also gets the plain `env` and the
        `command`."""
        clone = _registrable(definition)
        containers = []
        for container in clone["containerDefinitions"]:
            container = dict(container)
            if container["name"] == self.container_name:
                container["image"] = image
                container = self._with_secrets(container)
                for key in ("environment", "secrets"):
                    if key in container:
                        container[key] = [e for e in container[key] if e["name"] not in unset]
                if version is not None:
                    container = self._with_env_and_command(container, command)
                labels = {
                    k: v
                    for k, v in container.get("dockerLabels", {}).items()
                    if k != self.version_label
                }
                if version is not None:
                    labels[self.version_label] = version
                if labels:
                    container["dockerLabels"] = labels
                else:
                    container.pop("dockerLabels", None)
            containers.append(container)
        clone["containerDefinitions"] = containers
        return clone

    def _with_secrets(self, container: dict) -> dict:
        """The container with the `secrets` references set (a name keeps its place when the
        task definition has it; new ones follow) and no plain variable of the same name."""
        if not self.secrets:
            return container
        if "environment" in container:
            container["environment"] = [
                e for e in container["environment"] if e["name"] not in self.secrets
            ]
        secrets = [
            {"name": s["name"], "valueFrom": self.secrets.get(s["name"], s["valueFrom"])}
            for s in container.get("secrets", [])
        ]
        defined = {s["name"] for s in secrets}
        secrets += [
            {"name": k, "valueFrom": v} for k, v in self.secrets.items() if k not in defined
        ]
        container["secrets"] = secrets
        return container

    def _with_env_and_command(self, container: dict, command: tuple[str, ...] | None) -> dict:
        """The container with the plain `env` set (a variable keeps its place when the task
        definition has it; new ones follow in order) and `command`, if any."""
        if self.env:
            environment = [
                {"name": e["name"], "value": self.env.get(e["name"], e["value"])}
                for e in container.get("environment", [])
            ]
            defined = {e["name"] for e in environment}
            new = [(k, v) for k, v in self.env.items() if k not in defined]
            environment += [{"name": k, "value": v} for k, v in new]
            container["environment"] = environment
        if command:
            container["command"] = list(command)
        return container

    def _task_definition(self, arn: str) -> dict:
        return self._call(
            f"describe task definition {arn}", self.ecs.describe_task_definition, taskDefinition=arn
        )["taskDefinition"]

    def _container(self, definition: dict, service_name: str) -> dict:
        for container in definition.get("containerDefinitions", []):
            if container.get("name") == self.container_name:
                return container
        names = [c.get("name") for c in definition.get("containerDefinitions", [])]
        raise ConfigurationError(
            f"task definition {definition.get('taskDefinitionArn')} of service {service_name!r} "
            f"has no container named {self.container_name!r} (it has {names}): fix "
            "`container_name` in the ECS settings block"
        )

    # -- services and rollouts -------------------------------------------------------------
    def _service(self, name: str) -> dict:
        answer = self._call(
            f"describe service {name}",
            self.ecs.describe_services,
            cluster=self.cluster,
            services=[name],
        )
        services = [s for s in answer.get("services", []) if s.get("status") == "ACTIVE"]
        if not services:
            raise ConfigurationError(
                f"ECS service {name!r} not found (or not active) in cluster {self.cluster!r}: "
                "create it or fix `api_service` / `worker_service` in the ECS settings block"
            )
        return services[0]

    def _service_state(self, name: str) -> ServiceState:
        service = self._service(name)
        definition = self._task_definition(service["taskDefinition"])
        container = self._container(definition, name)
        env = {e["name"]: e["value"] for e in container.get("environment", [])}
        version = container.get("dockerLabels", {}).get(self.version_label) or env.get(
            "APP_VERSION"
        )
        return ServiceState(
            image=container.get("image"),
            version=version,
            replicas=service["desiredCount"],
            revision=service["taskDefinition"],
        )

    def _restore(self, name: str, state: ServiceState) -> None:
        if state.revision is None:
            raise ConfigurationError(
                f"cannot restore service {name!r}: the recorded state has no task-definition "
                "revision (was the snapshot taken from an ECS environment?)"
            )
        self._update(name, state.revision, state.replicas)

    def _update(self, name: str, revision: str, count: int) -> None:
        self._call(
            f"update service {name} to {revision} x{count}",
            self.ecs.update_service,
            cluster=self.cluster,
            service=name,
            taskDefinition=revision,
            desiredCount=count,
        )
        self._watch(name, revision, count)

    def _watch(self, name: str, revision: str, count: int) -> None:
        """Wait until `revision` runs `count` tasks as the only deployment of `name`."""
        deadline = self._clock() + self.rollout.deadline_seconds
        status = "no answer yet"
        rollout = _Rollout(revision)
        while True:
            try:
                status, failures = self._rollout_status(name, rollout, count)
            except TransientError as exc:  # one bad poll does not decide the rollout
                status, failures = f"last poll failed: {exc}", []
            if status == "done":
                return
            if rollout.failed:
                raise StepFailed(
                    f"rollout of {revision} on service {name!r} failed: {rollout.failed}; "
                    f"{len(failures)} tasks stopped: {_reasons(failures)}"
                )
            if rollout.threshold is not None and len(failures) >= rollout.threshold:
                raise StepFailed(
                    f"rollout of {revision} on service {name!r} failed: {len(failures)} tasks "
                    f"stopped (threshold {rollout.threshold}): {_reasons(failures)}"
                )
            if self._clock() >= deadline:
                raise StepFailed(
                    f"rollout of {revision} on service {name!r} not done after "
                    f"{self.rollout.deadline_seconds:.0f} s ({status}); stopped tasks: "
                    f"{_reasons(failures)}"
                )
            self._sleep(self.rollout.poll_seconds)

    def _rollout_status(self, name: str, rollout: "_Rollout", count: int) -> tuple[str, list[dict]]:
        """How the rollout stands, and the stopped tasks of its deployment. Sets
        `rollout.failed` when ECS gave up on it: its deployment FAILED (the circuit breaker),
        or a PRIMARY deployment of another task definition replaced it (the breaker's
        rollback, or someone else's deployment): ECS updates the service's deployments as
        update_service returns, so the release's deployment is PRIMARY from the first poll."""
        service = self._service(name)
        primary = _primary(service)
        if rollout.threshold is None and not _breaker_decides(service, self.rollout):
            rollout.threshold = self.rollout.threshold(count)
        deployments = service.get("deployments", [])
        if rollout.deployment_id is None and primary.get("taskDefinition") == rollout.revision:
            rollout.deployment_id = primary["id"]
        ours = next((d for d in deployments if d.get("id") == rollout.deployment_id), None)
        if ours is None:
            ours = next((d for d in deployments if d.get("taskDefinition") == rollout.revision), {})
        failures = [
            t
            for t in self._stopped_tasks(
                name, ours.get("id") or rollout.deployment_id, rollout.revision
            )
            if not (t.get("stoppedReason") or "").startswith(_SCALE_IN)
        ]
        if ours.get("rolloutState") == "FAILED":
            reason = ours.get("rolloutStateReason") or "no reason given"
            rollout.failed = f"ECS marked its deployment FAILED ({reason})"
        if primary.get("taskDefinition") != rollout.revision:
            rollout.failed = (
                (rollout.failed + "; " if rollout.failed else "")
                + f"the service's PRIMARY deployment runs {primary.get('taskDefinition')} "
                "instead (ECS's deployment circuit breaker rolled it back, or another "
                "deployment replaced it)"
            )
        if rollout.failed:
            return "failed", failures
        running, wanted = primary.get("runningCount", 0), primary.get("desiredCount")
        others = len(deployments) - 1
        settled = primary.get("rolloutState") in (None, "COMPLETED")
        if wanted == count and running == count and others == 0 and settled:
            return "done", failures
        return (
            f"{running}/{count} running, {others} older deployments draining, "
            f"rollout {primary.get('rolloutState', 'unknown')}",
            failures,
        )

    def _stopped_tasks(self, name: str, deployment_id: str | None, revision: str) -> list[dict]:
        """Stopped tasks of service `name` started by its deployment `deployment_id` (when
        unknown: of `revision`). ListTasks takes `startedBy` only alone, so the service's
        stopped tasks are listed and picked by their `startedBy`."""
        arns = self._call(
            "list stopped tasks",
            self.ecs.list_tasks,
            cluster=self.cluster,
            serviceName=name,
            desiredStatus="STOPPED",
        ).get("taskArns", [])
        tasks = self._describe_tasks(arns) if arns else []
        if deployment_id is not None:
            return [t for t in tasks if t.get("startedBy") == deployment_id]
        return [t for t in tasks if t.get("taskDefinitionArn") == revision]

    def _running_tasks(self, deployment_id: str) -> list[dict]:
        """Tasks of a deployment ECS wants running (ListTasks' default desiredStatus):
        `startedBy` must be ListTasks' only filter."""
        arns = self._call(
            "list tasks", self.ecs.list_tasks, cluster=self.cluster, startedBy=deployment_id
        ).get("taskArns", [])
        return self._describe_tasks(arns) if arns else []

    def _describe_tasks(self, arns: list[str]) -> list[dict]:
        tasks = []
        for start in range(0, len(arns), 100):  # describe_tasks takes at most 100
            tasks += self._call(
                "describe tasks",
                self.ecs.describe_tasks,
                cluster=self.cluster,
                tasks=arns[start : start + 100],
            ).get("tasks", [])
        return tasks

    def _wait_stopped(self, task_arn: str, timeout: float) -> tuple[dict, bool]:
        deadline = self._clock() + timeout
        while True:
            task = self._describe_tasks([task_arn])[0]
            if task.get("lastStatus") == "STOPPED":
                return task, False
            if self._clock() >= deadline:
                self._call(
                    f"stop task {task_arn}",
                    self.ecs.stop_task,
                    cluster=self.cluster,
                    task=task_arn,
                    reason=f"rhesis-release: no exit after {timeout:.0f} s",
                )
                return task, True
            self._sleep(min(self.rollout.poll_seconds, 2.0))

    def _task_logs(self, container: dict, task_arn: str) -> str:
        """The task's log from CloudWatch when the container uses the awslogs driver;
        otherwise why there is none and the fix."""
        config = container.get("logConfiguration", {})
        options = config.get("options", {})
        group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
        if config.get("logDriver") != "awslogs" or not group or not prefix:
            return (
                f"(no output: container {self.container_name!r} of the API service's task "
                "definition has no awslogs logConfiguration with awslogs-group and "
                "awslogs-stream-prefix, so a one-off's output cannot be read: add one)"
            )
        stream = f"{prefix}/{self.container_name}/{task_arn.rsplit('/', 1)[-1]}"
        try:
            events = self.logs.get_log_events(
                logGroupName=group, logStreamName=stream, startFromHead=True
            )["events"]
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            return f"(log stream {group}/{stream} unavailable: {code})"
        return "\n".join(e["message"] for e in events)

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise classify_aws_error(exc, what) from None


def _registrable(definition: dict) -> dict:
    return {k: definition[k] for k in _REGISTRABLE if definition.get(k) not in (None, [], {})}


def _primary(service: dict) -> dict:
    for deployment in service.get("deployments", []):
        if deployment.get("status") == "PRIMARY":
            return deployment
    raise StepFailed(f"service {service.get('serviceName')!r} reports no PRIMARY deployment")


@dataclass
class _Rollout:
    """What a rollout watch learns as it polls."""

    revision: str
    deployment_id: str | None = None
    threshold: int | None = None
    failed: str = ""


def _breaker_decides(service: dict, policy: RolloutPolicy) -> bool:
    """Whether ECS's deployment circuit breaker judges the rollout: enabled on the service and
    no threshold of our own set (counting to ECS's own threshold would only race it)."""
    breaker = service.get("deploymentConfiguration", {}).get("deploymentCircuitBreaker", {})
    return bool(breaker.get("enable")) and policy.failed_tasks_threshold is None


def _reasons(tasks: list[dict]) -> str:
    reasons = sorted({t.get("stoppedReason") or "no reason given" for t in tasks})
    return "; ".join(reasons) or "none"
