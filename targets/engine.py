"""Docker engine operations every target needs: build, log in, push, and error triage.

Prefect-free: progress goes to the `log` callback the caller passes.
"""

import hashlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from targets.errors import (
    AuthenticationError,
    ConfigurationError,
    ReleaseError,
    StepFailed,
    TransientError,
)
from targets.images import parse_image_reference

Log = Callable[[str], None]

_TRANSIENT_MARKERS = (
    "connection refused",
    "connection reset",
    "i/o timeout",
    "timeout",
    "timed out",
    "temporarily unavailable",
    "too many requests",
    "eof",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway",
    "no such host",
    "tls handshake",
)
_AUTH_MARKERS = (
    "unauthorized",
    "authentication required",
    "401",
    "no basic auth credentials",
    "denied",
    "incorrect username or password",
)


def classify_engine_error(exc: Exception, what: str) -> ReleaseError:
    """Turn a docker-py / transport error into the error class that says how to react."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return TransientError(f"{what}: the Docker engine did not answer ({text})")
    if isinstance(exc, docker.errors.ImageNotFound):
        return StepFailed(f"{what}: image not found ({exc.explanation or text})")
    if any(m in lowered for m in _AUTH_MARKERS):
        return AuthenticationError(f"{what}: credentials refused ({_explanation(exc)})")
    if isinstance(exc, docker.errors.APIError) and exc.status_code and exc.status_code >= 500:
        return TransientError(f"{what}: {_explanation(exc)}")
    if any(m in lowered for m in _TRANSIENT_MARKERS):
        return TransientError(f"{what}: {text}")
    return StepFailed(f"{what}: {_explanation(exc)}")


def _explanation(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    reference: str  # repository:version
    version: str
    source_revision: str


def content_version(context: Path) -> str:
    """A version derived from the build context's files: same code, same version."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        if "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return "src-" + digest.hexdigest()[:12]


def source_revision(context: Path) -> str:
    """The git commit the context comes from ('+dirty' if it has local changes)."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(context), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(context), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _is_git_url(source: str) -> bool:
    return "://" in source or source.startswith("git@") or source.endswith(".git")


@contextmanager
def build_context(source: str, git_ref: str | None, subdir: str | None, log: Log) -> Iterator[Path]:
    """A local directory holding the Dockerfile: the path itself, or a checkout of a git URL."""
    if _is_git_url(source):
        with tempfile.TemporaryDirectory(prefix="release-src-") as tmp:
            log(f"cloning {source} at {git_ref or 'default branch'}")
            _git(["clone", "--quiet", source, tmp])
            if git_ref:
                _git(["-C", tmp, "checkout", "--quiet", git_ref])
            yield _checked_context(Path(tmp) / (subdir or ""), source)
        return
    if git_ref:
        raise ConfigurationError(
            f"git ref {git_ref!r} given with a local build context {source!r}: pass a git URL "
            "as the source to build a ref, or drop the ref to build the directory as it is"
        )
    yield _checked_context(Path(source) / (subdir or ""), source)


def _git(args: list[str]) -> None:
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigurationError(
            f"git {' '.join(args[:2])} failed: {proc.stderr.strip()}; check the source URL and ref"
        )


def _checked_context(path: Path, source: str) -> Path:
    if not path.is_dir():
        raise ConfigurationError(
            f"build context {str(path)!r} does not exist: pass the directory that holds the "
            f"Dockerfile (source was {source!r})"
        )
    if not (path / "Dockerfile").is_file():
        raise ConfigurationError(
            f"build context {str(path)!r} has no Dockerfile: pass the directory that holds it"
        )
    return path.resolve()


def build_image(
    client: docker.DockerClient,
    context: Path,
    repository: str,
    version: str,
    log: Log,
    build_args: dict[str, str] | None = None,
) -> BuiltImage:
    """Build `context` as repository:version, labelled with version and source revision."""
    reference = parse_image_reference(repository).with_tag(version)
    revision = source_revision(context)
    labels = {
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
    }
    args = {"APP_VERSION": version, **(build_args or {})}
    log(f"building {reference} from {context} (revision {revision})")
    try:
        stream = client.api.build(
            path=str(context),
            tag=str(reference),
            buildargs=args,
            labels=labels,
            network_mode="host",
            rm=True,
            forcerm=True,
            decode=True,
        )
        for item in stream:
            if "error" in item:
                detail = item.get("errorDetail", {}).get("message") or item["error"]
                raise StepFailed(f"docker build of {reference} failed: {detail.strip()}")
            line = item.get("stream", "").rstrip()
            if line:
                log(line)
        image = client.images.get(str(reference))
    except ReleaseError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise classify_engine_error(exc, f"docker build of {reference}") from None
    return BuiltImage(image.id, str(reference), version, revision)


def registry_auth(username: str, password: str) -> dict[str, str]:
    return {"username": username, "password": password}


def login(client: docker.DockerClient, registry: str, auth: dict[str, str]) -> None:
    """Check the credentials against the registry (reauth: never trust a cached login)."""
    try:
        client.login(registry=registry, reauth=True, **auth)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        error = classify_engine_error(exc, f"login to registry {registry}")
        if isinstance(error, AuthenticationError):
            raise AuthenticationError(
                f"registry {registry} refused the credentials for user {auth['username']!r}: "
                "fix the username/password in the registry credentials block"
            ) from None
        if isinstance(error, TransientError):
            raise TransientError(
                f"registry {registry} is unavailable ({_explanation(exc)}): start it, or fix "
                "the registry address in image_repository and the registry credentials block"
            ) from None
        raise error from None


def push_image(
    client: docker.DockerClient, reference: str, auth: dict[str, str] | None, log: Log
) -> tuple[str, bool]:
    """Push `reference`; return (pinned reference repo@sha256:..., whether bytes were sent).

    docker-py does not raise on a failed push: errors arrive as items of the stream, so
    every item is checked. When the registry already serves this image, nothing is sent.
    """
    ref = parse_image_reference(reference)
    what = f"push of {reference}"
    try:
        existing = _registry_digest(client, reference, auth)
        local = client.images.get(reference)
        if existing and f"{ref.name}@{existing}" in local.attrs.get("RepoDigests", []):
            log(f"registry already has {reference} as {existing}: skipping upload")
            return f"{ref.name}@{existing}", False
        digest = None
        for item in client.api.push(
            ref.name, tag=ref.tag, auth_config=auth, stream=True, decode=True
        ):
            if "error" in item:
                detail = item.get("errorDetail", {}).get("message") or item["error"]
                raise _classify_push_error(detail, reference)
            digest = item.get("aux", {}).get("Digest", digest)
            status = item.get("status")
            if status and not item.get("progressDetail"):
                log(f"{item.get('id', '')} {status}".strip())
    except ReleaseError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise classify_engine_error(exc, what) from None
    if not digest:
        raise StepFailed(f"{what}: the engine reported no digest; see the push log above")
    log(f"pushed {reference} as {digest}")
    return f"{ref.name}@{digest}", True


def _registry_digest(client: docker.DockerClient, reference: str, auth: dict | None) -> str | None:
    try:
        data = client.api.inspect_distribution(reference, auth_config=auth)
    except docker.errors.APIError as exc:
        lowered = str(exc).lower()
        if exc.status_code in (401, 403, 404) or "not found" in lowered or "unknown" in lowered:
            return None  # not there (or not visible): the push decides
        raise
    return data.get("Descriptor", {}).get("digest")


def _classify_push_error(detail: str, reference: str) -> ReleaseError:
    lowered = detail.lower()
    if any(m in lowered for m in _AUTH_MARKERS):
        return AuthenticationError(
            f"push of {reference} refused by the registry ({detail}): check the registry "
            "credentials block (username, password, registry_url)"
        )
    if any(m in lowered for m in _TRANSIENT_MARKERS):
        return TransientError(f"push of {reference} failed: {detail}")
    return StepFailed(f"push of {reference} failed: {detail}")


def resolve_image(
    client: docker.DockerClient, reference: str, auth: dict[str, str] | None
) -> tuple[str, str]:
    """A released-elsewhere image: (pinned repo@sha256:..., version from its label)."""
    ref = parse_image_reference(reference)
    what = f"resolve image {reference}"
    try:
        digest = ref.digest or _registry_digest(client, reference, auth)
        if not digest:
            raise ConfigurationError(
                f"image {reference} is not in the registry (or the credentials cannot see it): "
                "push it first or fix the reference"
            )
        pinned = f"{ref.name}@{digest}"
        image = client.images.pull(pinned, auth_config=auth)
    except ReleaseError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise classify_engine_error(exc, what) from None
    version = image.labels.get("org.opencontainers.image.version") or ref.tag or digest[7:19]
    return pinned, version
