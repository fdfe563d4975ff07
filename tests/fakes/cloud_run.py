"""A fake Cloud Run Admin API v2 that runs real containers.

It speaks the REST wire protocol the real `google.cloud.run_v2` client uses (JSON in
camelCase, enums as integers, long-running operations under `.../operations/*`) for the calls
the Cloud Run target makes: services get/create/patch, revisions list/get, jobs
get/create/patch/run, executions get, operations get. Every revision and every job execution
runs as a real container on the local Docker engine (host network, its own free port through
$PORT), so startup probes, traffic moves and exit codes are real.

Routing: the service URL is `<fake>/_svc/<service>` (proxied to a revision by traffic
percent) and a tag URL is `<fake>/_tag/<service>/<tag>` (proxied to the tagged revision).

Auth, as Google does it: a request carries either a self-signed JWT of a service account
(what google-auth sends for GAPIC clients) or an OAuth access token from `/token` (what
`GcpCredentials.get_access_token()` gets, and what the registry accepts as the Artifact
Registry password). Keys come from `service_account_key()`; an account created with
`authorized=False` authenticates but gets 403 PERMISSION_DENIED, as a missing IAM role does.

Rules of the real service it enforces: traffic tags (3+ characters, RFC 1035, tag plus
service name at most 46) and revision names (RFC 1035, at most 63, prefixed by the service
name); a revision whose container does not start fails its rollout with code 13. A service
made private with `require_authentication()` answers 403 without an identity token (which
`/token` issues for a `target_audience` grant) and 401 with an invalid one; getIamPolicy
shows whether allUsers may invoke it. A fake Secret Manager (`add_secret_version()`, the
versions.get call) resolves `secretKeyRef` variables into the real containers' env.

A fake Cloud Logging API v2 (`POST /v2/entries:list`, on the same server and with the same
auth) serves each job execution's output as Cloud Run writes it: one entry per stdout/stderr
line of the real container (`textPayload`), with the `cloud_run_job` resource labels and the
`run.googleapis.com/execution_name` label, filtered by the `A="x" AND B="y"` filters the
adapter sends, ordered by timestamp, paged. `log_delay` holds an execution's entries back for
that long after it ends, as Cloud Logging's ingestion delay does; `deny_logging()` answers
403 as a project without roles/logging.viewer does.
"""

import http.client
import json
import random
import re
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import docker
import docker.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt
from google.auth import exceptions as auth_exceptions

LABEL = "io.rhesis.fake-cloudrun"
TYPE = "type.googleapis.com/google.cloud.run.v2."
LATEST, REVISION = 1, 2  # TrafficTargetAllocationType
PENDING, FAILED, SUCCEEDED = 1, 3, 4  # Condition.State
CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 500: 13, 503: 14}
STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# Names as Cloud Run checks them: RFC 1035 labels; a tag's URL is TAG---SERVICE-..., so the
# two together may have 46 characters.
RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
TAG_MIN, TAG_AND_SERVICE_MAX = 3, 46
_PARENT = r"/v2/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SecretUnavailable(Exception):
    """A secretKeyRef that does not resolve: the container cannot start."""


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Instance:
    container: object
    port: int


@dataclass
class Revision:
    name: str  # short name
    service: str
    template: dict
    generation: int
    created: str = field(default_factory=now)
    state: int = PENDING
    message: str = ""
    # Code of the rollout's operation error when the revision fails: 13 (INTERNAL) when its
    # container does not start or listen, as Cloud Run answers; 9 when it cannot run at all.
    error_code: int = 13
    instances: list[Instance] = field(default_factory=list)


@dataclass
class Fault:
    status: int
    method: str | None
    path_contains: str | None
    count: int


class FakeCloudRun:
    """The fake control plane. Use as a context manager; `close()` removes every container."""

    def __init__(
        self,
        engine: docker.DockerClient,
        *,
        access_token: str,
        pull_auth: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ):
        self.engine = engine
        self.access_token = access_token
        self.pull_auth = pull_auth
        self.startup_timeout = startup_timeout
        self.instance_id = uuid.uuid4().hex[:8]
        self.lock = threading.RLock()
        self.services: dict[str, dict] = {}  # full name -> stored Service JSON
        self.revisions: dict[str, Revision] = {}  # full name -> revision
        self.jobs: dict[str, dict] = {}
        self.executions: dict[str, dict] = {}
        self.execution_logs: dict[str, str] = {}
        self.log_entries: list[tuple[float, dict]] = []  # (visible from, LogEntry JSON)
        self.log_delay = 0.0  # seconds an execution's entries take to become listable
        self.logging_denied = False
        self.operations: dict[str, dict] = {}
        self.accounts: dict[str, tuple[bytes, bool]] = {}  # key id -> (public PEM, authorized)
        self.issued_tokens: dict[str, bool] = {access_token: True}
        # Identity tokens (what a caller of a private service sends) are JWTs the fake signs.
        id_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.id_signer = crypt.RSASigner.from_string(
            id_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        )
        self.id_public = id_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.secret_store: dict[str, list[str]] = {}  # projects/P/secrets/S -> values by version
        self.private_services: set[str] = set()  # full names: no allUsers invoker binding
        self.invoker_tokens: list[bool] = []  # per proxied request: bore a valid identity token
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every API call
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeCloudRun":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for container in self.engine.containers.list(
            all=True, filters={"label": f"{LABEL}={self.instance_id}"}
        ):
            container.remove(force=True)

    # -- test controls -------------------------------------------------------------------
    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def service_account_key(self, email: str, project: str, *, authorized: bool = True) -> dict:
        """A real service-account key (RSA) whose token_uri is the local token endpoint."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.accounts[key_id] = (public, authorized)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": key_id,
            "private_key": private,
            "client_email": email,
            "client_id": str(random.randrange(10**20, 10**21)),
            "token_uri": self.token_uri,
        }

    def add_secret_version(self, project: str, secret: str, value: str) -> str:
        """Add a version to a Secret Manager secret (created on first use); its number."""
        with self.lock:
            versions = self.secret_store.setdefault(f"projects/{project}/secrets/{secret}", [])
            versions.append(value)
            return str(len(versions))

    def deny_logging(self) -> None:
        """entries:list answers 403, as for an account without roles/logging.viewer."""
        self.logging_denied = True

    def require_authentication(self, service: str) -> None:
        """The service is no longer public (as without `--allow-unauthenticated`): its URLs
        answer 403 without an identity token and 401 with an invalid one."""
        with self.lock:
            self.private_services.add(self._find_service(service)["name"])

    def fail_next(
        self,
        status: int = 503,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        count: int = 1,
    ) -> None:
        """The next `count` matching API calls answer `status` (before auth, as a proxy would)."""
        with self.lock:
            self.faults.append(Fault(status, method, path_contains, count))

    def mutations(self) -> list[tuple[str, str]]:
        """Every call that changes something (entries:list is a POST that reads)."""
        return [(m, p) for m, p in self.requests if m != "GET" and p != "/v2/entries:list"]

    def service(self, name: str) -> dict:
        """The stored service (full or short name), as the API would return it."""
        with self.lock:
            return self._service_json(self._find_service(name))

    def revision(self, name: str) -> dict:
        """A revision (short name), as the API would return it."""
        with self.lock:
            for rev in self.revisions.values():
                if rev.name == name:
                    return self._revision_json(rev)
        raise KeyError(name)

    def job(self, name: str) -> dict:
        """The stored job (short name), as the API would return it."""
        with self.lock:
            for full, job in self.jobs.items():
                if full.rsplit("/", 1)[-1] == name:
                    return json.loads(json.dumps(job))
        raise KeyError(name)

    def routable_instances(self, service: str) -> dict[str, int]:
        """Revision short name -> running container count, for revisions that get requests."""
        with self.lock:
            svc = self._find_service(service)
            result = {}
            for rev in self._routable(svc):
                running = 0
                for inst in rev.instances:
                    inst.container.reload()
                    running += inst.container.status == "running"
                result[rev.name] = running
            return result

    # -- HTTP ----------------------------------------------------------------------------
    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = _serve

        return Handler

    def _dispatch(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if parts.path.startswith(("/_svc/", "/_tag/")):
            return self._proxy(req, parts, body)
        if parts.path.startswith("/_logs/"):
            text = self.execution_logs.get(parts.path[len("/_logs/") :], "")
            return self._reply(req, 200, text.encode(), "text/plain")
        try:
            if parts.path == "/token":
                payload = self._token(parse_qs(body.decode()))
            else:
                payload = self._api(req, parts, body)
            self._reply(req, 200, json.dumps(payload).encode())
        except ApiError as exc:
            error = {"code": exc.status, "message": exc.message, "status": STATUS[exc.status]}
            self._reply(req, exc.status, json.dumps({"error": error}).encode())

    @staticmethod
    def _reply(req, status: int, data: bytes, ctype: str = "application/json") -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _api(self, req, parts, body: bytes) -> dict:
        method, path = req.command, parts.path
        self.requests.append((method, path))
        self._inject_fault(method, path)
        self._authorize(req.headers.get("Authorization", ""), method, path)
        data = json.loads(body) if body else {}
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        version = re.fullmatch(
            r"/v1/projects/(?P<p>[^/]+)/secrets/(?P<s>[^/]+)/versions/(?P<v>[^/:]+)", path
        )
        if method == "GET" and version:  # Secret Manager: a version's metadata, no payload
            with self.lock:
                return self._secret_version(version["p"], version["s"], version["v"])
        if method == "POST" and path == "/v2/entries:list":  # Cloud Logging
            with self.lock:
                return self._list_entries(data)
        routes = [
            ("GET", r"/services/(?P<s>[^/:]+)", self._get_service),
            ("POST", r"/services", self._create_service),
            ("PATCH", r"/services/(?P<s>[^/:]+)", self._patch_service),
            ("GET", r"/services/(?P<s>[^/:]+):getIamPolicy", self._get_iam_policy),
            ("GET", r"/services/(?P<s>[^/:]+)/revisions", self._list_revisions),
            ("GET", r"/services/(?P<s>[^/:]+)/revisions/(?P<r>[^/:]+)", self._get_revision),
            ("GET", r"/jobs/(?P<j>[^/:]+)", self._get_job),
            ("POST", r"/jobs", self._create_job),
            ("PATCH", r"/jobs/(?P<j>[^/:]+)", self._patch_job),
            ("POST", r"/jobs/(?P<j>[^/:]+):run", self._run_job),
            ("GET", r"/jobs/(?P<j>[^/:]+)/executions/(?P<e>[^/:]+)", self._get_execution),
            ("GET", r"/operations/(?P<o>[^/:]+)", self._get_operation),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(_PARENT + pattern, path)
            if verb == method and match:
                parent = f"projects/{match['project']}/locations/{match['location']}"
                args = {k: v for k, v in match.groupdict().items() if len(k) == 1}
                with self.lock:
                    return handler(parent, data, query, **args)
        raise ApiError(404, f"fake Cloud Run: no route for {method} {path}")

    def _inject_fault(self, method: str, path: str) -> None:
        with self.lock:
            for fault in self.faults:
                if (fault.method in (None, method)) and (
                    fault.path_contains is None or fault.path_contains in path
                ):
                    fault.count -= 1
                    if fault.count <= 0:
                        self.faults.remove(fault)
                    raise ApiError(fault.status, "The service is currently unavailable.")

    def _authorize(self, header: str, method: str, path: str) -> None:
        token = header.removeprefix("Bearer ").strip()
        authorized = self.issued_tokens.get(token)
        if authorized is None and token.count(".") == 2:
            authorized = self._verified_account(token)
        if authorized is None:
            raise ApiError(401, "Request had invalid authentication credentials.")
        if not authorized:
            resource = path.removeprefix("/v2/")
            raise ApiError(
                403, f"Permission 'run.{method.lower()}' denied on resource '{resource}'."
            )

    def _verified_account(self, token: str) -> bool | None:
        """Authorized flag of the service account that signed `token`; None: not verifiable."""
        try:
            header = jwt.decode_header(token)
            public, authorized = self.accounts[header.get("kid", "")]
            jwt.decode(token, certs=public, verify=True)
        except (KeyError, ValueError, auth_exceptions.GoogleAuthError):
            return None
        return authorized

    def _token(self, form: dict) -> dict:
        """OAuth 2.0 JWT-bearer grant (what google-auth does for service-account keys)."""
        assertion = (form.get("assertion") or [""])[0]
        authorized = self._verified_account(assertion) if assertion else None
        if authorized is None:
            raise ApiError(400, "invalid_grant: Invalid JWT Signature.")
        claims = jwt.decode(assertion, verify=False)
        if claims.get("target_audience"):  # an identity token for that audience
            issued = int(time.time())
            identity = {
                "iss": "https://accounts.google.com",
                "aud": claims["target_audience"],
                "azp": claims["iss"],
                "email": claims["iss"],
                "sub": claims["iss"],
                "authorized": authorized,
                "iat": issued,
                "exp": issued + 3600,
            }
            return {"id_token": jwt.encode(self.id_signer, identity).decode()}
        token = self.access_token if authorized else "ya29.fake-" + secrets.token_hex(16)
        self.issued_tokens[token] = authorized
        return {"access_token": token, "token_type": "Bearer", "expires_in": 3600}

    # -- Secret Manager ------------------------------------------------------------------
    def _secret_version(self, project: str, secret: str, version: str) -> dict:
        versions = self.secret_store.get(f"projects/{project}/secrets/{secret}")
        if not versions:
            raise ApiError(404, f"Secret [projects/{project}/secrets/{secret}] not found.")
        number = len(versions) if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= number <= len(versions):
            raise ApiError(
                404,
                f"Secret Version [projects/{project}/secrets/{secret}/versions/{version}] "
                "not found.",
            )
        return {
            "name": f"projects/{project}/secrets/{secret}/versions/{number}",
            "createTime": now(),
            "state": "ENABLED",
        }

    def _resolve_secret(self, parent: str, ref: dict) -> str:
        """The value a secretKeyRef gives a container (`parent`: its service or job)."""
        secret, version = ref.get("secret", ""), ref.get("version") or "latest"
        if not secret.startswith("projects/"):
            secret = f"projects/{parent.split('/')[1]}/secrets/{secret}"
        versions = self.secret_store.get(secret.split("/versions/")[0], [])
        number = len(versions) if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= number <= len(versions):
            raise SecretUnavailable(
                f"spec.template.spec.containers[0].env.valueFrom.secretKeyRef: secret {secret} "
                f"version {version} was not found, or the service account may not access it."
            )
        return versions[number - 1]

    # -- services ------------------------------------------------------------------------
    def _find_service(self, name: str) -> dict:
        for full, svc in self.services.items():
            if full == name or full.rsplit("/", 1)[-1] == name:
                return svc
        raise ApiError(404, f"Resource '{name}' does not exist.")

    def _get_service(self, parent, data, query, s) -> dict:
        return self._service_json(self._find_service(f"{parent}/services/{s}"))

    def _get_iam_policy(self, parent, data, query, s) -> dict:
        svc = self._find_service(f"{parent}/services/{s}")
        if svc["name"] in self.private_services:
            return {"version": 1, "etag": "BwYp"}
        invokers = {"role": "roles/run.invoker", "members": ["allUsers"]}
        return {"version": 1, "etag": "BwYq", "bindings": [invokers]}

    def _create_service(self, parent, data, query) -> dict:
        service_id = query.get("serviceId", "")
        full = f"{parent}/services/{service_id}"
        if full in self.services:
            raise ApiError(409, f"Resource '{service_id}' already exists.")
        svc = {
            "name": full,
            "uid": str(uuid.uuid4()),
            "generation": "0",
            "createTime": now(),
            "template": {},
            "traffic": [],
        }
        self.services[full] = svc
        return self._rollout(svc, data)

    def _patch_service(self, parent, data, query, s) -> dict:
        return self._rollout(self._find_service(f"{parent}/services/{s}"), data)

    def _rollout(self, svc: dict, data: dict) -> dict:
        """Apply a new template and/or traffic; the operation finishes in the background."""
        previous_traffic = svc["traffic"]
        new_revision = None
        template = data.get("template") or svc["template"]
        generation = int(svc["generation"]) + 1
        if template != svc["template"]:
            new_revision = self._new_revision(svc, template, generation)
        traffic = data.get("traffic") or svc["traffic"] or [{"type": LATEST, "percent": 100}]
        self._check_traffic(svc, traffic, new_revision)
        svc.update(
            template=template,
            traffic=traffic,
            generation=str(generation),
            updateTime=now(),
            labels=data.get("labels", svc.get("labels", {})),
        )
        if new_revision:
            self.revisions[f"{svc['name']}/revisions/{new_revision.name}"] = new_revision
            svc["latestCreatedRevision"] = f"{svc['name']}/revisions/{new_revision.name}"
        operation = self._operation(svc["name"], "Service")
        threading.Thread(
            target=self._finish_rollout,
            args=(svc, new_revision, previous_traffic, operation),
            daemon=True,
        ).start()
        return operation

    def _new_revision(self, svc: dict, template: dict, generation: int) -> Revision:
        short = svc["name"].rsplit("/", 1)[-1]
        name = template.get("revision") or f"{short}-{generation:05d}-{secrets.token_hex(2)}"
        if not name.startswith(short + "-"):
            raise ApiError(400, f"Revision name must start with '{short}-', got '{name}'.")
        if len(name) > 63 or not RFC1035.fullmatch(name):
            raise ApiError(
                400,
                f"template.revision: '{name}' must be 1-63 lowercase letters, digits or "
                "hyphens, start with a letter and not end with a hyphen.",
            )
        if f"{svc['name']}/revisions/{name}" in self.revisions:
            raise ApiError(409, f"Revision named '{name}' with different configuration exists.")
        return Revision(name, svc["name"], template, generation)

    def _check_traffic(self, svc: dict, traffic: list, new: Revision | None) -> None:
        if sum(int(t.get("percent", 0)) for t in traffic) != 100:
            raise ApiError(400, "Traffic percentages must add up to 100.")
        tags = [t["tag"] for t in traffic if t.get("tag")]
        if len(tags) != len(set(tags)):
            raise ApiError(400, f"Traffic tags must be unique, got {tags}.")
        short = svc["name"].rsplit("/", 1)[-1]
        for tag in tags:
            if len(tag) < TAG_MIN or not RFC1035.fullmatch(tag):
                raise ApiError(
                    400,
                    f"spec.traffic.tag: traffic tag '{tag}' must be at least {TAG_MIN} "
                    "lowercase letters, digits or hyphens, start with a letter and not end "
                    "with a hyphen.",
                )
            if len(tag) + len(short) > TAG_AND_SERVICE_MAX:
                raise ApiError(
                    400,
                    f"spec.traffic.tag: traffic tag '{tag}' and service name '{short}' together "
                    "are too long. Combined traffic tag and service name cannot exceed "
                    f"{TAG_AND_SERVICE_MAX} characters.",
                )
        for target in traffic:
            if int(target.get("type", 0)) == REVISION:
                name = target.get("revision", "")
                known = f"{svc['name']}/revisions/{name}" in self.revisions
                if not known and not (new and new.name == name):
                    raise ApiError(400, f"Revision '{name}' referenced in traffic not found.")

    def _resolve(self, svc: dict, target: dict) -> Revision | None:
        if int(target.get("type", 0)) == REVISION:
            return self.revisions.get(f"{svc['name']}/revisions/{target['revision']}")
        latest = svc.get("latestReadyRevision")
        return self.revisions.get(latest) if latest else None

    def _routable(self, svc: dict) -> list[Revision]:
        routable = []
        for target in svc["traffic"]:
            rev = self._resolve(svc, target)
            if rev and (int(target.get("percent", 0)) > 0 or target.get("tag")):
                routable.append(rev)
        return routable

    def _finish_rollout(self, svc, new_revision, previous_traffic, operation) -> None:
        if new_revision:
            self._start_revision(new_revision)
            with self.lock:
                if new_revision.state == SUCCEEDED:
                    svc["latestReadyRevision"] = f"{svc['name']}/revisions/{new_revision.name}"
                else:
                    svc["traffic"] = previous_traffic  # a failed rollout moves no traffic
                    self._stop_unroutable(svc)
                    return self._fail(operation, new_revision.error_code, new_revision.message)
        with self.lock:
            waiting = [r for r in self._routable(svc) if not r.instances]
        for rev in waiting:  # a revision taking traffic again starts again
            self._start_revision(rev)
        with self.lock:
            self._stop_unroutable(svc)
            svc["observedGeneration"] = svc["generation"]
            operation.update(done=True, response={"@type": TYPE + "Service"})
            operation["response"].update(self._service_json(svc))

    def _stop_unroutable(self, svc: dict) -> None:
        routable = {r.name for r in self._routable(svc)}
        for rev in self.revisions.values():
            if rev.service == svc["name"] and rev.name not in routable and rev.instances:
                for inst in rev.instances:
                    inst.container.remove(force=True)
                rev.instances = []

    def _start_revision(self, rev: Revision) -> None:
        """Start the revision's instances and wait for their startup probes (TCP on $PORT,
        or the container's httpGet/tcpSocket startup probe)."""
        container = rev.template["containers"][0]
        count = max(1, int(rev.template.get("scaling", {}).get("minInstanceCount", 0)))
        try:
            self._ensure_image(container["image"])
            for index in range(count):
                port = free_port()
                handle = self._run_container(
                    container,
                    {
                        "PORT": str(port),
                        "K_SERVICE": rev.service.rsplit("/", 1)[-1],
                        "K_REVISION": rev.name,
                    },
                    {f"{LABEL}.revision": rev.name},
                    rev.service,
                    name=f"fakerun-{rev.name}-{index}-{self.instance_id}",
                )
                rev.instances.append(Instance(handle, port))
            ready, message = self._probe(rev, container.get("startupProbe") or {})
        except docker.errors.DockerException as exc:
            ready, message = False, f"Revision '{rev.name}' failed to start: {exc}"
            rev.error_code = 9
        except SecretUnavailable as exc:
            ready, message = False, f"Revision '{rev.name}' is not ready: {exc}"
            rev.error_code = 9
        with self.lock:
            rev.state, rev.message = (SUCCEEDED, "") if ready else (FAILED, message)
        if not ready:
            for inst in rev.instances:
                inst.container.remove(force=True)
            rev.instances = []

    def _probe(self, rev: Revision, probe: dict) -> tuple[bool, str]:
        deadline = time.monotonic() + self.startup_timeout
        pending = list(rev.instances)
        path = probe.get("httpGet", {}).get("path")
        while pending and time.monotonic() < deadline:
            for inst in list(pending):
                inst.container.reload()
                if inst.container.status in ("exited", "dead"):
                    code = inst.container.attrs["State"]["ExitCode"]
                    return False, (
                        f"Revision '{rev.name}' is not ready and cannot serve traffic. The "
                        f"user-provided container exited with code {code} before listening "
                        f"on the port defined by the PORT={inst.port} environment variable."
                    )
                if self._answers(inst.port, path):
                    pending.remove(inst)
            time.sleep(0.3)
        if pending:
            return False, (
                f"Revision '{rev.name}' is not ready and cannot serve traffic. The user-provided "
                "container failed the startup probe within the allocated timeout."
            )
        return True, ""

    @staticmethod
    def _answers(port: int, path: str | None) -> bool:
        try:
            if path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            return 200 <= conn.getresponse().status < 400
        except OSError:
            return False

    def _ensure_image(self, image: str) -> None:
        try:
            self.engine.images.get(image)
        except docker.errors.ImageNotFound:
            self.engine.images.pull(image, auth_config=self.pull_auth)

    def _service_json(self, svc: dict) -> dict:
        base = f"{self.url}/_svc/{svc['name'].rsplit('/', 1)[-1]}"
        statuses = []
        for target in svc["traffic"]:
            rev = self._resolve(svc, target)
            status = {k: v for k, v in target.items() if k in ("type", "percent", "tag")}
            status["revision"] = rev.name if rev else target.get("revision", "")
            if target.get("tag"):
                status["uri"] = f"{self.url}/_tag/{svc['name'].rsplit('/', 1)[-1]}/{target['tag']}"
            statuses.append(status)
        latest = self.revisions.get(svc.get("latestCreatedRevision", ""))
        reconciling = svc.get("observedGeneration") != svc["generation"]
        ready = FAILED if latest and latest.state == FAILED else SUCCEEDED
        ready = PENDING if reconciling and ready != FAILED else ready
        condition = {"type": "Ready", "state": ready, "lastTransitionTime": now()}
        if latest and latest.state == FAILED:
            condition["message"] = latest.message
        return {
            **svc,
            "uri": base,
            "urls": [base],
            "trafficStatuses": statuses,
            "reconciling": reconciling,
            "terminalCondition": condition,
            "conditions": [condition],
            "etag": f'"{svc["generation"]}"',
        }

    # -- revisions -----------------------------------------------------------------------
    def _revision_json(self, rev: Revision) -> dict:
        parent = rev.service
        condition = {"type": "Ready", "state": rev.state, "lastTransitionTime": now()}
        if rev.message:
            condition["message"] = rev.message
        return {
            "name": f"{parent}/revisions/{rev.name}",
            "service": parent.rsplit("/", 1)[-1],
            "generation": str(rev.generation),
            "createTime": rev.created,
            "labels": rev.template.get("labels", {}),
            "annotations": rev.template.get("annotations", {}),
            "scaling": rev.template.get("scaling", {}),
            "containers": rev.template.get("containers", []),
            "volumes": rev.template.get("volumes", []),
            "conditions": [condition],
            "reconciling": rev.state == PENDING,
        }

    def _list_revisions(self, parent, data, query, s) -> dict:
        svc = self._find_service(f"{parent}/services/{s}")
        revs = [r for r in self.revisions.values() if r.service == svc["name"]]
        return {"revisions": [self._revision_json(r) for r in revs]}

    def _get_revision(self, parent, data, query, s, r) -> dict:
        rev = self.revisions.get(f"{parent}/services/{s}/revisions/{r}")
        if rev is None:
            raise ApiError(404, f"Revision '{r}' does not exist.")
        return self._revision_json(rev)

    # -- jobs and executions -------------------------------------------------------------
    def _get_job(self, parent, data, query, j) -> dict:
        job = self.jobs.get(f"{parent}/jobs/{j}")
        if job is None:
            raise ApiError(404, f"Resource 'projects/.../jobs/{j}' does not exist.")
        return job

    def _create_job(self, parent, data, query) -> dict:
        full = f"{parent}/jobs/{query.get('jobId', '')}"
        if full in self.jobs:
            raise ApiError(409, f"Resource '{full}' already exists.")
        self.jobs[full] = {**data, "name": full, "generation": "1", "createTime": now()}
        return self._done(self._operation(full, "Job"), "Job", self.jobs[full])

    def _patch_job(self, parent, data, query, j) -> dict:
        job = self._get_job(parent, data, query, j)
        job.update(template=data["template"], generation=str(int(job["generation"]) + 1))
        return self._done(self._operation(job["name"], "Job"), "Job", job)

    def _run_job(self, parent, data, query, j) -> dict:
        job = self._get_job(parent, data, query, j)
        name = f"{job['name']}/executions/{j}-{secrets.token_hex(3)}"
        execution = {
            "name": name,
            "job": j,
            "createTime": now(),
            "taskCount": 1,
            "template": job["template"]["template"],
            "runningCount": 1,
            "reconciling": True,
            "logUri": f"{self.url}/_logs/{name}",
            "conditions": [{"type": "Completed", "state": PENDING}],
        }
        self.executions[name] = execution
        operation = self._operation(name, "Execution")
        operation["metadata"] = {"@type": TYPE + "Execution", **execution}
        threading.Thread(target=self._execute, args=(execution, operation), daemon=True).start()
        return operation

    def _run_container(
        self, container: dict, extra_env: dict, labels: dict, parent: str, name=None
    ):
        """Run a Cloud Run container spec as a real container on the local engine, its
        Secret Manager references resolved (`parent`: the service or job)."""
        env = {}
        for var in container.get("env", []):
            ref = var.get("valueSource", {}).get("secretKeyRef")
            env[var["name"]] = self._resolve_secret(parent, ref) if ref else var.get("value", "")
        return self.engine.containers.run(
            container["image"],
            command=container.get("args") or None,
            entrypoint=container.get("command") or None,
            environment={**env, **extra_env},
            network_mode="host",
            detach=True,
            name=name,
            labels={LABEL: self.instance_id, **labels},
        )

    def _execute(self, execution: dict, operation: dict) -> None:
        task = execution["template"]
        container = task["containers"][0]
        timeout = float(str(task.get("timeout", "600s")).rstrip("s"))
        execution["startTime"] = now()
        try:
            self._ensure_image(container["image"])
            labels = {f"{LABEL}.execution": execution["name"]}
            job = execution["name"].split("/executions/")[0]
            handle = self._run_container(container, {}, labels, job)
            try:
                code = handle.wait(timeout=timeout)["StatusCode"]
                message = f"The container exited with an exit code of {code}."
            except Exception:  # the task deadline: Cloud Run kills the task
                handle.kill()
                code, message = 124, f"Task exceeded its timeout of {timeout:.0f}s."
            self.execution_logs[execution["name"]] = handle.logs().decode(errors="replace")
            self._record_log(execution["name"], handle)
            handle.remove(force=True)
        except (docker.errors.DockerException, SecretUnavailable) as exc:
            code, message = 1, f"The task could not start: {exc}"
        with self.lock:
            task_name = execution["name"].rsplit("/", 1)[-1] + "-task0"
            failed = code != 0
            execution.update(
                runningCount=0,
                succeededCount=0 if failed else 1,
                failedCount=1 if failed else 0,
                completionTime=now(),
                reconciling=False,
                conditions=[
                    {
                        "type": "Completed",
                        "state": FAILED if failed else SUCCEEDED,
                        "message": f"Task {task_name} failed with message: {message}"
                        if failed
                        else "Execution completed successfully.",
                        "lastTransitionTime": now(),
                    }
                ],
            )
            operation["metadata"] = {"@type": TYPE + "Execution", **execution}
            if failed:
                self._fail(operation, 9, "The execution failed.")
            else:
                self._done(operation, "Execution", execution)

    # -- Cloud Logging -------------------------------------------------------------------
    def _record_log(self, execution: str, handle) -> None:
        """The container's stdout and stderr lines as Cloud Run's log entries."""
        _, project, _, location, _, job, _, short = execution.split("/")
        lines = []
        for stream in ("stdout", "stderr"):
            raw = handle.logs(stdout=stream == "stdout", stderr=stream == "stderr", timestamps=True)
            for n, line in enumerate(raw.decode(errors="replace").splitlines()):
                stamp, _, text = line.partition(" ")
                lines.append((stamp, stream, n, text))
        visible = time.monotonic() + self.log_delay
        with self.lock:
            for stamp, stream, _, text in sorted(lines):
                entry = {
                    "logName": f"projects/{project}/logs/run.googleapis.com%2F{stream}",
                    "resource": {
                        "type": "cloud_run_job",
                        "labels": {"job_name": job, "location": location, "project_id": project},
                    },
                    "textPayload": text,
                    "timestamp": stamp,
                    "receiveTimestamp": now(),
                    "insertId": secrets.token_hex(8),
                    "labels": {
                        "run.googleapis.com/execution_name": short,
                        "run.googleapis.com/task_index": "0",
                        "run.googleapis.com/task_attempt": "0",
                    },
                }
                self.log_entries.append((visible, entry))

    def _list_entries(self, data: dict) -> dict:
        if self.logging_denied:
            raise ApiError(
                403,
                "Permission 'logging.logEntries.list' denied on resource (or it may not exist).",
            )
        projects = {r.removeprefix("projects/") for r in data.get("resourceNames", [])}
        if not projects or any("/" in p for p in projects):
            raise ApiError(400, "resourceNames: expected projects/PROJECT_ID")
        terms = []
        for term in filter(None, re.split(r"\s+AND\s+", data.get("filter", "").strip())):
            match = re.fullmatch(r'([\w.]+(?:\."[^"]+")?)\s*=\s*"((?:[^"\\]|\\.)*)"', term)
            if not match:
                raise ApiError(400, f"Unparseable filter: {term}")
            terms.append((match[1], match[2]))
        if data.get("orderBy", "timestamp asc") != "timestamp asc":
            raise ApiError(400, "the fake only orders by 'timestamp asc'")
        shown = time.monotonic()
        found = [
            entry
            for visible, entry in self.log_entries
            if visible <= shown
            and entry["resource"]["labels"]["project_id"] in projects
            and all(_field(entry, key) == value for key, value in terms)
        ]
        size = min(int(data.get("pageSize") or 50), 1000)
        start = int(data.get("pageToken") or 0)
        page = {"entries": found[start : start + size]}
        if start + size < len(found):
            page["nextPageToken"] = str(start + size)
        return page

    def _get_execution(self, parent, data, query, j, e) -> dict:
        execution = self.executions.get(f"{parent}/jobs/{j}/executions/{e}")
        if execution is None:
            raise ApiError(404, f"Execution '{e}' does not exist.")
        return execution

    # -- operations ----------------------------------------------------------------------
    def _operation(self, resource: str, kind: str) -> dict:
        parent = "/".join(resource.split("/")[:4])
        name = f"{parent}/operations/{uuid.uuid4()}"
        operation = {"name": name, "done": False, "metadata": {"@type": TYPE + kind}}
        self.operations[name] = operation
        return operation

    @staticmethod
    def _done(operation: dict, kind: str, resource: dict) -> dict:
        operation.update(done=True, response={"@type": TYPE + kind, **resource})
        return operation

    @staticmethod
    def _fail(operation: dict, code: int, message: str) -> None:
        operation.update(done=True, error={"code": code, "message": message})

    def _get_operation(self, parent, data, query, o) -> dict:
        operation = self.operations.get(f"{parent}/operations/{o}")
        if operation is None:
            raise ApiError(404, f"Operation '{o}' does not exist.")
        return operation

    # -- routing -------------------------------------------------------------------------
    def _invoker_refusal(self, header: str, svc: dict) -> tuple[int, str] | None:
        """Why a request to a private service is refused (None: it may pass), as Cloud Run
        answers: 403 without a token or for a caller without run.invoker, 401 for a token
        that is not a valid identity token for the service's URL."""
        if not header.startswith("Bearer "):
            return 403, "Error: Forbidden. Your client does not have permission to get URL."
        audience = f"{self.url}/_svc/{svc['name'].rsplit('/', 1)[-1]}"
        try:
            claims = jwt.decode(header[7:].strip(), certs=self.id_public, audience=audience)
        except (ValueError, auth_exceptions.GoogleAuthError):
            return (
                401,
                "Error: Unauthorized. Your client does not have permission to the requested URL.",
            )
        if not claims.get("authorized"):
            return 403, "Error: Forbidden. Your client does not have permission to get URL."
        return None

    def _proxy(self, req, parts, body: bytes) -> None:
        segments = parts.path.split("/", 4 if parts.path.startswith("/_tag/") else 3)
        with self.lock:
            try:
                svc = self._find_service(segments[2])
            except ApiError:
                return self._reply(req, 404, b"no such service", "text/plain")
            if svc["name"] in self.private_services:
                refused = self._invoker_refusal(req.headers.get("Authorization", ""), svc)
                self.invoker_tokens.append(refused is None)
                if refused:
                    return self._reply(req, refused[0], refused[1].encode(), "text/plain")
            if segments[1] == "_tag":
                tag = segments[3]
                targets = [t for t in svc["traffic"] if t.get("tag") == tag]
                weights = [1] * len(targets)
            else:
                targets = [t for t in svc["traffic"] if int(t.get("percent", 0)) > 0]
                weights = [int(t["percent"]) for t in targets]
            rev = self._resolve(svc, random.choices(targets, weights)[0]) if targets else None
            instances = list(rev.instances) if rev else []
        if not instances:
            return self._reply(req, 503, b"Service Unavailable", "text/plain")
        rest = segments[-1] if len(segments) > (4 if segments[1] == "_tag" else 3) else ""
        path = "/" + rest + (f"?{parts.query}" if parts.query else "")
        inst = random.choice(instances)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=10)
            conn.request(req.command, path, body or None, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except OSError:
            return self._reply(req, 503, b"Service Unavailable", "text/plain")
        self._reply(req, response.status, data, response.getheader("Content-Type", "text/plain"))


def _field(entry: dict, key: str) -> str | None:
    """A LogEntry field as a filter names it: `resource.labels.job_name`,
    `labels."run.googleapis.com/execution_name"`."""
    value = entry
    for part in re.findall(r'"[^"]+"|[^.]+', key):
        if not isinstance(value, dict):
            return None
        value = value.get(part.strip('"'))
    return value if isinstance(value, str) else None
