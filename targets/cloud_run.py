"""Google Cloud Run target: the API and the Celery workers as two Cloud Run services, one-off
commands (migrations) as a Cloud Run Job, all through the Cloud Run Admin API v2 (`run_v2`).

A release creates the API's new revision with no traffic and a tag, so it can be verified
through the tag URL before `promote_api` moves 100% of the traffic; rollback pins the traffic
back to the recorded revision (no rebuild, no new revision). State is read back from the
services themselves: the serving revision (the one with 100% of the traffic), its pinned
image, the version annotation and the worker revision's minimum instance count.

As the real service behaves: the candidate tag fits Cloud Run's limit (tag plus service name
at most 46 characters); a rollout whose new revision cannot become ready is a failed step
(its conditions say why), not a transient fault; the migration job runs with the API
service's service account, VPC access, resource limits and secrets; a service that is not
public is verified with an identity token. Secret variables are Secret Manager references
(`secretKeyRef`) pinned to a version per release, on both services and the job.

A one-off's output (what the migration check reads, a failed migration's Alembic error) is
the job execution's log, read from Cloud Logging (Logging API v2 `entries:list`, through
google-auth's AuthorizedSession): the Admin API returns none. Entries arrive with a delay, so
the adapter polls until their count stops growing (bounded by `log_wait`). A project whose
Logging the release's account cannot read is refused by `check()`, before any change.

Retries: idempotent reads and operation polls retry 429/5xx a few times with jittered
backoff inside the adapter; mutations are never retried here: a 429/5xx on one raises
TransientError and the Prefect task decides. Permission errors are never retried.
"""

import concurrent.futures
import re
import secrets
import time
from collections.abc import Callable
from datetime import timedelta

import google.auth.credentials
import google.auth.transport.requests
import requests.exceptions
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.cloud import run_v2

from targets.base import OneOffResult, Processes, ServiceState, TargetState, WorkerHealth
from targets.cloud_run_names import (
    candidate_tag,
    max_api_service_length,
    slug,
    tag_room_problem,
)
from targets.errors import (
    AuthenticationError,
    ConfigurationError,
    ReleaseError,
    StepFailed,
    TransientError,
)

VERSION_ANNOTATION = "rhesis.io/version"
CLOUDSQL_VOLUME = "cloudsql"
CLOUDSQL_MOUNT = "/cloudsql"  # where gcloud's --add-cloudsql-instances puts the sockets
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED
# A Cloud Run service must listen on $PORT or its startup probe fails; a Celery worker does
# not, so the worker command runs behind a minimal HTTP listener on $PORT.
WORKER_PORT_SHIM = ["sh", "-c", 'python3 -m http.server "$PORT" >/dev/null 2>&1 & exec "$@"', "--"]
_TRANSIENT = (api_exceptions.TooManyRequests, api_exceptions.ServerError)
READ_RETRY = api_retry.Retry(
    predicate=api_retry.if_exception_type(*_TRANSIENT),
    initial=0.5,
    maximum=5.0,
    multiplier=2.0,
    timeout=30.0,
)


LOGGING_ENDPOINT = "https://logging.googleapis.com"
LOGGING_SCOPES = ["https://www.googleapis.com/auth/logging.read"]
LOG_PAGE_SIZE = 1000
LOG_POLL_SECONDS = 2.0  # between two reads of an execution's entries
LOGGING_FIX = (
    "grant the release's service account the Logs Viewer role (roles/logging.viewer) on "
    "the project, so the migration job's output can be read"
)


def short_name(resource: str) -> str:
    return resource.rsplit("/", 1)[-1]


class CloudRunTarget:
    def __init__(
        self,
        credentials: Credentials,
        *,
        project: str,
        region: str,
        api_service: str,
        worker_service: str,
        migration_job: str,
        env: dict[str, str] | None = None,
        cloudsql_instances: list[str] | None = None,
        processes: Processes | None = None,
        api_endpoint: str | None = None,
        operation_timeout: float = 600.0,
        identity: Callable[[str], Credentials] | None = None,
        secrets: dict[str, tuple[str, str]] | None = None,
        logging_endpoint: str | None = None,
        log_wait: float = 60.0,
    ):
        options = ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None
        clients = dict(credentials=credentials, transport="rest", client_options=options)
        self.services = run_v2.ServicesClient(**clients)
        self.revisions = run_v2.RevisionsClient(**clients)
        self.jobs = run_v2.JobsClient(**clients)
        self.executions = run_v2.ExecutionsClient(**clients)
        self.location = f"projects/{project}/locations/{region}"
        self.api_name = f"{self.location}/services/{api_service}"
        self.worker_name = f"{self.location}/services/{worker_service}"
        self.job_name = f"{self.location}/jobs/{migration_job}"
        self.env = dict(env or {})
        self.cloudsql_instances = list(cloudsql_instances or [])
        self.processes = processes or Processes()
        self.operation_timeout = operation_timeout
        self.identity = identity  # audience -> credentials whose token is an identity token
        # Secret variables as Secret Manager references: name -> (secret, pinned version).
        self.secrets = dict(secrets or {})
        self.project = project
        self.logging_url = f"{(logging_endpoint or LOGGING_ENDPOINT).rstrip('/')}/v2/entries:list"
        self.log_wait = log_wait  # at most this long for an execution's entries to settle
        scoped = google.auth.credentials.with_scopes_if_required(credentials, LOGGING_SCOPES)
        self.log_session = google.auth.transport.requests.AuthorizedSession(scoped)

    # -- facts ---------------------------------------------------------------------------
    def check(self) -> None:
        if len(short_name(self.api_name)) > max_api_service_length():
            raise ConfigurationError(tag_room_problem(short_name(self.api_name)))
        for name in (self.api_name, self.worker_name):
            if self._get_service(name, allow_missing=True) is None:
                raise ConfigurationError(
                    f"Cloud Run service {short_name(name)!r} does not exist in "
                    f"{self.location}: create it first (gcloud run deploy) or fix "
                    "api_service/worker_service in the Cloud Run settings block"
                )
        self._get_job()  # may be missing (the first run_oneoff creates it), must be readable
        self._list_entries(self._log_filter(), page_size=1, pages=1)  # Logging is readable

    def read_state(self) -> TargetState:
        api = self._serving(self._get_service(self.api_name))
        workers = self._serving(self._get_service(self.worker_name))
        return TargetState(
            api=self._state(api, replicas=1) if api else ServiceState(),
            workers=self._state(workers, replicas=None) if workers else ServiceState(),
        )

    def candidate_url(self) -> str:
        service = self._get_service(self.api_name)
        candidate = short_name(service.latest_created_revision)
        for status in service.traffic_statuses:
            if status.revision == candidate and status.tag and status.uri:
                return status.uri
        raise StepFailed(
            f"revision {candidate!r} of {short_name(self.api_name)} has no tag URL: "
            "deploy the candidate (deploy_api) before verifying it"
        )

    def service_url(self) -> str:
        return self._get_service(self.api_name).uri

    def request_headers(self, url: str) -> dict[str, str]:
        """Headers a verification request to the API's URLs (`url`) needs: none when the
        service is public (allUsers may invoke it, or its invoker IAM check is disabled);
        else an identity token of the environment's service account whose audience is the
        service URL, as Cloud Run requires from an authenticated caller."""
        service = self._get_service(self.api_name)
        if self._public(service):
            return {}
        if self.identity is None:
            raise AuthenticationError(
                f"Cloud Run service {short_name(self.api_name)} requires authentication and "
                "these credentials cannot make identity tokens: use a service-account key in "
                "the GcpCredentials block, or allow unauthenticated invocations"
            )
        credentials = self.identity(service.uri)
        self._call(
            f"get an identity token for {short_name(self.api_name)}",
            credentials.refresh,
            google.auth.transport.requests.Request(),
        )
        return {"Authorization": f"Bearer {credentials.token}"}

    def _public(self, service: run_v2.Service) -> bool:
        if service.invoker_iam_disabled:
            return True
        try:
            policy = self._call(
                f"read the IAM policy of {short_name(service.name)}",
                self.services.get_iam_policy,
                request={"resource": service.name},
                retry=READ_RETRY,
            )
        except AuthenticationError:  # may not read it: authenticate to be sure
            return False
        return any(
            binding.role == "roles/run.invoker" and "allUsers" in binding.members
            for binding in policy.bindings
        )

    def api_runs(self, image: str) -> str:
        service = self._get_service(self.api_name)
        names = [short_name(service.latest_created_revision), self._serving_name(service)]
        for name in filter(None, dict.fromkeys(names)):
            revision = self._call(
                f"read revision {name}",
                self.revisions.get_revision,
                name=f"{service.name}/revisions/{name}",
                retry=READ_RETRY,
            )
            if revision.containers and revision.containers[0].image == image:
                return f"revision {name} of {short_name(self.api_name)} runs {image}"
        raise StepFailed(f"no revision of {short_name(self.api_name)} runs {image}")

    def workers_alive(self, image: str, count: int) -> WorkerHealth:
        service = self._get_service(self.worker_name)
        revision = self._serving(service)
        if revision is None:
            return WorkerHealth(count, 0, "no worker revision serves")
        running = revision.containers[0].image if revision.containers else None
        problems = []
        if running != image:
            problems.append(f"revision {short_name(revision.name)} runs {running}")
        if not _ready(revision.conditions):
            problems.append(f"revision {short_name(revision.name)} is not ready")
        if service.reconciling:
            problems.append("the worker service is still rolling out")
        ready = 0 if problems else revision.scaling.min_instance_count
        return WorkerHealth(count, ready, "; ".join(problems))

    # -- operations ----------------------------------------------------------------------
    def deploy_api(self, image: str, version: str) -> None:
        tag = candidate_tag(version, short_name(self.api_name))
        service = self._get_service(self.api_name)
        serving = self._serving_name(service)
        revision = self._revision_name(self.api_name, version)
        self._set_image(service.template, image, version, revision)
        api = service.template.containers[0]
        command = self.processes.api_command  # None: the image's own entrypoint serves it
        api.command, api.args = (command[:1], command[1:]) if command else ([], [])
        api.ports = [run_v2.ContainerPort(container_port=self.processes.api_port)]
        tagged = run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=0, tag=tag)
        if serving is None:  # nothing serves yet: nothing to protect
            tagged.percent = 100
        keep = [run_v2.TrafficTarget(type_=REVISION, revision=serving, percent=100)]
        service.traffic = [*(keep if serving else []), tagged]
        self._update(service, f"deploy revision {revision} (no traffic, tag {tag})", revision)

    def promote_api(self) -> None:
        service = self._get_service(self.api_name)
        candidate = short_name(service.latest_created_revision)
        if service.latest_ready_revision != service.latest_created_revision:
            raise StepFailed(f"candidate revision {candidate!r} is not ready: not promoting it")
        tag = next((t.tag for t in service.traffic if t.revision == candidate), "")
        service.traffic = [
            run_v2.TrafficTarget(type_=REVISION, revision=candidate, percent=100, tag=tag)
        ]
        self._update(service, f"move 100% of the traffic to {candidate}")

    def scale_workers(self, image: str, version: str, count: int) -> None:
        service = self._get_service(self.worker_name)
        revision = self._revision_name(self.worker_name, version)
        template = service.template
        self._set_image(template, image, version, revision)
        container = template.containers[0]
        container.command = WORKER_PORT_SHIM
        container.args = list(self.processes.worker_command)
        resources = container.resources or run_v2.ResourceRequirements()
        resources.cpu_idle = False  # CPU always allocated: workers run outside requests
        container.resources = resources
        template.scaling.min_instance_count = count
        service.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        self._update(service, f"run {count} worker(s) of {image} as {revision}", revision)

    def checks_before_push(self, built: dict[str, str]) -> bool:
        """One-offs run in the cloud, from the registry: only a pushed image can be checked."""
        return False

    def run_oneoff(
        self, image: str, command: list[str], env: dict[str, str], timeout: float
    ) -> OneOffResult:
        task = self._job_task(image, command, {**self.env, **env}, timeout)
        job = run_v2.Job(template=run_v2.ExecutionTemplate(task_count=1, template=task))
        what = f"run {' '.join(command)} in {image} as job {short_name(self.job_name)}"
        if self._get_job() is None:
            operation = self._call(
                f"create job {short_name(self.job_name)}",
                self.jobs.create_job,
                parent=self.location,
                job=job,
                job_id=short_name(self.job_name),
            )
        else:
            job.name = self.job_name
            operation = self._call(f"update job {job.name}", self.jobs.update_job, job=job)
        self._wait(operation, f"update job {short_name(self.job_name)}")
        operation = self._call(what, self.jobs.run_job, name=self.job_name)
        try:
            self._wait(operation, what, timeout=timeout + 60)
        except StepFailed:
            if not operation.metadata or not operation.metadata.name:
                raise
        execution = self._call(
            "read the execution",
            self.executions.get_execution,
            name=operation.metadata.name,
            retry=READ_RETRY,
        )
        log = self.execution_log(short_name(execution.name))
        if execution.succeeded_count >= 1:
            return OneOffResult(0, f"{log}execution {short_name(execution.name)} succeeded")
        message = next((c.message for c in execution.conditions if c.message), "no message")
        exit_code = re.search(r"exit code of (\d+)", message)
        output = f"{log}{message}\nexecution {short_name(execution.name)} logs: {execution.log_uri}"
        return OneOffResult(int(exit_code.group(1)) if exit_code else 1, output)

    def execution_log(self, execution: str) -> str:
        """The output of a job execution (stdout and stderr, one line per entry), read from
        Cloud Logging once its entries stop arriving: read until two reads
        LOG_POLL_SECONDS apart see the same entries (and at least one), or `log_wait`."""
        where = self._log_filter(execution)
        deadline = time.monotonic() + self.log_wait
        entries = self._list_entries(where)
        while time.monotonic() < deadline:
            time.sleep(min(LOG_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            again = self._list_entries(where)
            if entries and len(again) == len(entries):
                break
            entries = again
        if not entries:
            return (
                f"(Cloud Logging listed no entries of execution {execution} within "
                f"{self.log_wait:.0f} s: the command printed nothing, its entries are late "
                "(raise log_wait_seconds in the Cloud Run settings block) or a log exclusion "
                "drops cloud_run_job entries)\n"
            )
        return "".join(f"{_entry_text(entry)}\n" for entry in entries)

    def _log_filter(self, execution: str | None = None) -> str:
        where = (
            'resource.type="cloud_run_job" AND '
            f'resource.labels.job_name="{short_name(self.job_name)}"'
        )
        if execution:
            where += f' AND labels."run.googleapis.com/execution_name"="{execution}"'
        return where

    def _list_entries(
        self, where: str, page_size: int = LOG_PAGE_SIZE, pages: int | None = None
    ) -> list[dict]:
        """Logging API v2 entries:list of this project, oldest first, every page."""
        body: dict = {
            "resourceNames": [f"projects/{self.project}"],
            "filter": where,
            "orderBy": "timestamp asc",
            "pageSize": page_size,
        }
        entries: list[dict] = []
        while True:
            try:
                response = self.log_session.post(self.logging_url, json=body, timeout=30)
            except auth_exceptions.RefreshError as exc:
                raise AuthenticationError(
                    f"read the job's logs: the service-account key was refused ({exc}); "
                    "replace the key in the GcpCredentials block"
                ) from None
            except (auth_exceptions.TransportError, requests.exceptions.RequestException) as exc:
                raise TransientError(f"Cloud Logging did not answer ({exc})") from None
            if response.status_code in (401, 403):
                raise ConfigurationError(
                    f"Cloud Logging refused to list the log entries of job "
                    f"{short_name(self.job_name)} in project {self.project} "
                    f"({response.status_code} {_api_message(response)}): {LOGGING_FIX}"
                )
            if response.status_code == 429 or response.status_code >= 500:
                raise TransientError(
                    f"Cloud Logging: {response.status_code} {_api_message(response)}"
                )
            if response.status_code != 200:
                raise StepFailed(
                    f"Cloud Logging entries:list: {response.status_code} {_api_message(response)}"
                )
            page = response.json()
            entries += page.get("entries", [])
            token = page.get("nextPageToken")
            pages = None if pages is None else pages - 1
            if not token or pages == 0:
                return entries
            body["pageToken"] = token

    def _job_task(
        self, image: str, command: list[str], env: dict[str, str], timeout: float
    ) -> run_v2.TaskTemplate:
        """The job's task as the API service runs: its service account, VPC access,
        encryption key, resource limits and secrets (Secret Manager variables and volumes),
        so the job reaches what the API reaches (Cloud SQL, private ranges) as the API's
        identity, not as the project's default compute account."""
        api = self._get_service(self.api_name).template
        source = api.containers[0] if api.containers else run_v2.Container()
        ours = _env(env) + _secret_refs(self.secrets)
        named = {var.name for var in ours}
        references = [var for var in source.env if "value_source" in var and var.name not in named]
        container = run_v2.Container(image=image, args=command, env=ours + references)
        if source.resources.limits:
            container.resources = run_v2.ResourceRequirements(limits=dict(source.resources.limits))
        secret_volumes = {volume.name: volume for volume in api.volumes if "secret" in volume}
        container.volume_mounts = [m for m in source.volume_mounts if m.name in secret_volumes]
        task = run_v2.TaskTemplate(
            containers=[container],
            volumes=list(secret_volumes.values()),
            max_retries=0,
            timeout=timedelta(seconds=int(timeout)),
            service_account=api.service_account,
            encryption_key=api.encryption_key,
        )
        if "vpc_access" in api:
            task.vpc_access = api.vpc_access
        self._attach_cloudsql(task.volumes, container)
        return task

    def restore_api(self, state: ServiceState) -> None:
        if state.revision is None:
            raise StepFailed("no recorded API revision to restore: put it back by hand")
        self._pin(self.api_name, state.revision)

    def restore_workers(self, state: ServiceState) -> None:
        if state.revision:
            self._pin(self.worker_name, state.revision)
        elif state.image:
            self.scale_workers(state.image, state.version or "unknown", state.replicas)

    def close(self) -> None:
        self.log_session.close()
        for client in (self.services, self.revisions, self.jobs, self.executions):
            client.transport.close()

    # -- helpers -------------------------------------------------------------------------
    def _pin(self, service_name: str, revision: str) -> None:
        """All traffic to an existing revision: no rebuild and no new revision."""
        service = self._get_service(service_name)
        service.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=100)]
        self._update(service, f"pin {short_name(service_name)} to revision {revision}")

    def _set_image(
        self, template: run_v2.RevisionTemplate, image: str, version: str, revision: str
    ) -> None:
        template.revision = revision
        template.annotations[VERSION_ANNOTATION] = version
        if not template.containers:
            template.containers.append(run_v2.Container())
        container = template.containers[0]
        container.image = image
        ours = _env(self.env) + _secret_refs(self.secrets)
        configured = {var.name for var in ours}
        kept = [var for var in container.env if var.name not in configured]
        container.env = kept + ours
        self._attach_cloudsql(template.volumes, container)

    def _attach_cloudsql(self, volumes, container: run_v2.Container) -> None:
        """Mount the Cloud SQL instances' sockets under /cloudsql, as gcloud does."""
        if not self.cloudsql_instances:
            return
        for volume in list(volumes):
            if volume.name == CLOUDSQL_VOLUME:
                volumes.remove(volume)
        volumes.append(
            run_v2.Volume(
                name=CLOUDSQL_VOLUME,
                cloud_sql_instance=run_v2.CloudSqlInstance(instances=self.cloudsql_instances),
            )
        )
        if all(mount.name != CLOUDSQL_VOLUME for mount in container.volume_mounts):
            container.volume_mounts.append(
                run_v2.VolumeMount(name=CLOUDSQL_VOLUME, mount_path=CLOUDSQL_MOUNT)
            )

    @staticmethod
    def _revision_name(service_name: str, version: str) -> str:
        service = short_name(service_name)
        suffix = secrets.token_hex(2)
        return f"{service}-{slug(version, 63 - len(service) - len(suffix) - 2)}-{suffix}"

    def _serving_name(self, service: run_v2.Service) -> str | None:
        statuses = [s for s in service.traffic_statuses if s.percent > 0 and s.revision]
        if statuses:
            return max(statuses, key=lambda s: s.percent).revision
        return short_name(service.latest_ready_revision) or None

    def _serving(self, service: run_v2.Service) -> run_v2.Revision | None:
        name = self._serving_name(service)
        if name is None:
            return None
        return self._call(
            f"read revision {name}",
            self.revisions.get_revision,
            name=f"{service.name}/revisions/{name}",
            retry=READ_RETRY,
        )

    @staticmethod
    def _state(revision: run_v2.Revision, replicas: int | None) -> ServiceState:
        container = revision.containers[0] if revision.containers else run_v2.Container()
        env = {var.name: var.value for var in container.env}
        return ServiceState(
            image=container.image or None,
            version=revision.annotations.get(VERSION_ANNOTATION) or env.get("APP_VERSION"),
            replicas=revision.scaling.min_instance_count if replicas is None else replicas,
            revision=short_name(revision.name),
        )

    def _get_service(self, name: str, allow_missing: bool = False) -> run_v2.Service:
        return self._call(
            f"read Cloud Run service {short_name(name)}",
            self.services.get_service,
            name=name,
            retry=READ_RETRY,
            allow_missing=allow_missing,
        )

    def _get_job(self) -> run_v2.Job | None:
        return self._call(
            f"read job {short_name(self.job_name)}",
            self.jobs.get_job,
            name=self.job_name,
            retry=READ_RETRY,
            allow_missing=True,
        )

    def _update(self, service: run_v2.Service, what: str, revision: str | None = None) -> None:
        """Apply `service`; when it creates `revision`, a rollout that fails because that
        revision cannot become ready is a failed step, whatever the operation's code (Cloud
        Run answers 9 or 13 for it): deploying the same revision again cannot help."""
        operation = self._call(what, self.services.update_service, service=service)
        try:
            self._wait(operation, what)
        except (TransientError, StepFailed):
            failure = self._revision_failure(service.name, revision) if revision else None
            if failure is None:
                raise
            raise StepFailed(f"{what}: revision {revision} failed: {failure}") from None

    def _revision_failure(self, service_name: str, revision: str) -> str | None:
        """Why `revision` failed to become ready, from its conditions; None: it did not."""
        found = self._call(
            f"read revision {revision}",
            self.revisions.get_revision,
            name=f"{service_name}/revisions/{revision}",
            retry=READ_RETRY,
            allow_missing=True,
        )
        failed = [c for c in found.conditions if c.state == FAILED] if found else []
        failed.sort(key=lambda c: c.type_ != "Ready")  # the Ready condition's word first
        return (failed[0].message or f"its {failed[0].type_} condition failed") if failed else None

    def _wait(self, operation, what: str, timeout: float | None = None):
        """Wait for a long-running operation, with a deadline; its error becomes StepFailed."""
        deadline = timeout or self.operation_timeout
        try:
            return self._call(what, operation.result, timeout=deadline, retry=READ_RETRY)
        except concurrent.futures.TimeoutError:
            raise StepFailed(
                f"{what}: not done after {deadline:.0f} s (operation {operation.operation.name})"
            ) from None

    def _call(self, what: str, fn: Callable, *args, allow_missing: bool = False, **kwargs):
        """Call the API; turn its errors into the class that says how to react
        (NotFound: None when `allow_missing`, else bad configuration)."""
        try:
            return fn(*args, **kwargs)
        except (ReleaseError, concurrent.futures.TimeoutError):
            raise
        except api_exceptions.NotFound as exc:
            if allow_missing:
                return None
            raise ConfigurationError(
                f"{what}: {exc.message}; check project, region and the service/job names "
                "in the Cloud Run settings block"
            ) from None
        except (api_exceptions.Unauthorized, api_exceptions.Forbidden) as exc:
            raise AuthenticationError(
                f"{what}: Google refused the credentials ({exc.message}); give the service "
                "account the Cloud Run Developer and Service Account User roles on "
                f"{self.location}, or fix the GcpCredentials block"
            ) from None
        except auth_exceptions.RefreshError as exc:
            raise AuthenticationError(
                f"{what}: the service-account key was refused ({exc.args[0] if exc.args else exc}"
                "); replace the key in the GcpCredentials block"
            ) from None
        except _TRANSIENT as exc:
            raise TransientError(f"{what}: {exc.code} {exc.message}") from None
        except (auth_exceptions.TransportError, requests.exceptions.RequestException) as exc:
            raise TransientError(f"{what}: the Cloud Run API did not answer ({exc})") from None
        except api_exceptions.GoogleAPICallError as exc:
            raise StepFailed(f"{what}: {exc.message}") from None


def _secret_refs(secrets: dict[str, tuple[str, str]]) -> list[run_v2.EnvVar]:
    """Secret variables as Secret Manager references: the value never leaves Secret Manager
    and the pinned version makes a revision (and its rollback) run the same secret."""
    return [
        run_v2.EnvVar(
            name=name,
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=version)
            ),
        )
        for name, (secret, version) in sorted(secrets.items())
    ]


def _entry_text(entry: dict) -> str:
    """A log entry's line: its text, or a structured entry's message."""
    if "textPayload" in entry:
        return str(entry["textPayload"]).rstrip("\n")
    payload = entry.get("jsonPayload") or {}
    return str(payload.get("message", payload)).rstrip("\n")


def _api_message(response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _env(values: dict[str, str]) -> list[run_v2.EnvVar]:
    return [run_v2.EnvVar(name=k, value=v) for k, v in sorted(values.items())]


def _ready(conditions) -> bool:
    return any(c.type_ == "Ready" and c.state == SUCCEEDED for c in conditions)
