"""Docker engine errors triaged into the classes that say how to react (Prefect-free)."""

import docker
import docker.errors
import requests.exceptions

from targets.errors import AuthenticationError, ReleaseError, StepFailed, TransientError

TRANSIENT_MARKERS = (
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
AUTH_MARKERS = (
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
    if any(m in lowered for m in AUTH_MARKERS):
        return AuthenticationError(f"{what}: credentials refused ({explanation(exc)})")
    if isinstance(exc, docker.errors.APIError) and exc.status_code and exc.status_code >= 500:
        return TransientError(f"{what}: {explanation(exc)}")
    if any(m in lowered for m in TRANSIENT_MARKERS):
        return TransientError(f"{what}: {text}")
    return StepFailed(f"{what}: {explanation(exc)}")


def explanation(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
