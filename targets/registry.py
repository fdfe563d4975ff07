"""The image registry: log in, push (returning the pinned digest), and resolve an image
released elsewhere. Prefect-free: progress goes to `log`."""

import re
from collections.abc import Callable

import docker
import docker.errors
import requests.exceptions

from targets.docker_engine import (
    AUTH_MARKERS,
    TRANSIENT_MARKERS,
    classify_engine_error,
    explanation,
)
from targets.errors import (
    AuthenticationError,
    ConfigurationError,
    ReleaseError,
    StepFailed,
    TransientError,
)
from targets.images import parse_image_reference

Log = Callable[[str], None]


def registry_auth(username: str, password: str) -> dict[str, str]:
    return {"username": username, "password": password}


def login(client: docker.DockerClient, registry: str, auth: dict[str, str]) -> None:
    """Check the credentials against the registry (reauth: never trust a cached login)."""
    try:
        client.login(registry=registry, reauth=True, **auth)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _login_error(exc, registry, auth["username"]) from None


# URLs and host:port pairs in an engine message: their digits are not status codes.
_ADDRESSES = re.compile(r"[a-z][a-z0-9+.-]*://\S+|[\w.-]+:\d+", re.IGNORECASE)


def _login_error(exc: Exception, registry: str, username: str) -> ReleaseError:
    """Why a login failed. The engine reports the registry's answer in one message that
    names the addresses involved: a connection reset to 127.0.0.1:5401 is transient, not
    "401", so the addresses are left out before the message is read."""
    what = f"login to registry {registry}"
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return classify_engine_error(exc, what)  # the engine itself did not answer
    text = _ADDRESSES.sub(" ", explanation(exc)).lower()
    if any(m in text for m in TRANSIENT_MARKERS):
        return TransientError(
            f"registry {registry} is unavailable ({explanation(exc)}): start it, or fix "
            "the registry address in image_repository and the registry credentials block"
        )
    if any(m in text for m in AUTH_MARKERS):
        return AuthenticationError(
            f"registry {registry} refused the credentials for user {username!r}: "
            "fix the username/password in the registry credentials block"
        )
    if isinstance(exc, docker.errors.APIError) and (exc.status_code or 0) >= 500:
        return TransientError(f"{what}: {explanation(exc)}")
    return StepFailed(f"{what}: {explanation(exc)}")


def push_image(
    client: docker.DockerClient,
    reference: str,
    auth: dict[str, str] | None,
    log: Log,
    same_sources: bool = False,
) -> tuple[str, bool]:
    """Push `reference`; return (pinned reference repo@sha256:..., whether bytes were sent).

    docker-py does not raise on a failed push: errors arrive as items of the stream, so
    every item is checked. When the registry already serves this image, nothing is sent.
    A tag the registry holds for another image is never moved: with `same_sources` (the
    tag is a version derived from the sources, which builds do not reproduce byte for
    byte) the registry's image is the release; otherwise the push is refused.
    """
    ref = parse_image_reference(reference)
    what = f"push of {reference}"
    try:
        existing = _registry_digest(client, reference, auth)
        local = client.images.get(reference)
        if existing and f"{ref.name}@{existing}" in local.attrs.get("RepoDigests", []):
            log(f"registry already has {reference} as {existing}: skipping upload")
            return f"{ref.name}@{existing}", False
        if existing and same_sources:
            log(
                f"{reference} already holds {existing}, built from the same sources: releasing "
                "that image rather than moving the tag"
            )
            return f"{ref.name}@{existing}", False
        if existing:
            raise ConfigurationError(
                f"tag {reference} already holds {existing} in the registry, another image than "
                "this build: a release never moves a tag. Give this build a new version, or "
                f"release the existing image with image={reference}"
            )
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
    if any(m in lowered for m in AUTH_MARKERS):
        return AuthenticationError(
            f"push of {reference} refused by the registry ({detail}): check the registry "
            "credentials block (username, password, registry_url)"
        )
    if any(m in lowered for m in TRANSIENT_MARKERS):
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
