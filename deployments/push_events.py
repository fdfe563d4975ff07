"""Push notifications from image registries, normalised to `Push(repository, tag, digest)`.

Three wire shapes:
- Docker registry (distribution) notifications: `{"events": [{"action": "push", "target":
  {"mediaType", "repository", "tag", "digest"}, "request": {"host"}}]}`. Blob uploads come
  as separate events without a tag: only manifest pushes with a tag count.
- Artifact Registry, through a Pub/Sub push subscription on the `gcr` topic:
  `{"message": {"data": base64({"action": "INSERT", "digest": "HOST/P/R/IMG@sha256:..",
  "tag": "HOST/P/R/IMG:TAG"})}}`.
- ECR, through EventBridge: `{"source": "aws.ecr", "detail-type": "ECR Image Action",
  "account", "region", "detail": {"action-type": "PUSH", "result": "SUCCESS",
  "repository-name", "image-digest", "image-tag"}}`.

`parse(path, body)` returns the pushes and, for everything else, why it was ignored; a body
that is not of its shape raises `MalformedNotification`. Types are strict: where a string
belongs, anything else is malformed. Names, tags and digests must follow distribution's
reference grammar (ASCII only, a name at most 255 characters), so every field of a push is
bounded and every push fits in one Prefect event.
"""

import base64
import binascii
import json
import re
import uuid
from dataclasses import asdict, dataclass
from typing import Any

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?", re.ASCII)
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}", re.ASCII)
_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]", re.ASCII)
MAX_NAME_LENGTH = 255  # distribution's limit on registry/repository
MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
)
# Event ids are uuid5(this, push + generation): the same push gets the same id on every
# redelivery, so Prefect drops a copy it already has (see deployments/event_bridge.py).
_EVENT_NAMESPACE = uuid.UUID("5d0f3c52-9b1e-4d59-8f7e-6a1c2b7f0e31")


class MalformedNotification(ValueError):
    """The body is not a notification of the expected shape; the message says why."""


@dataclass(frozen=True)
class Push:
    source: str  # registry | artifact-registry | ecr
    repository: str  # with the registry host, e.g. 127.0.0.1:5000/rhesis/backend
    tag: str
    digest: str

    @property
    def image(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def key(self) -> str:
        """What makes two notifications the same push."""
        return f"{self.source} {self.image}@{self.digest}"

    def event_id(self, generation: int) -> uuid.UUID:
        """The Prefect event id of this push's `generation`-th release (0 for the first)."""
        return uuid.uuid5(_EVENT_NAMESPACE, f"{self.key} #{generation}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


Parsed = tuple[list[Push], list[str]]


def show(value: Any, limit: int = 60) -> str:
    """`value` for a message: ASCII-only and short, whatever a sender put in it."""
    text = ascii(value)[1:-1] if isinstance(value, str) else ascii(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _field(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise MalformedNotification(f"{where} has no {key!r}")
    return data[key]


def _text(data: Any, key: str, where: str) -> str:
    value = _field(data, key, where)
    if not isinstance(value, str) or not value:
        raise MalformedNotification(f"{where}.{key} must be a non-empty string")
    return value


def _optional_text(data: Any, key: str, where: str) -> str | None:
    """A string field that may be absent or null (e.g. an untagged push has no tag)."""
    if data.get(key) is None:
        return None
    return _text(data, key, where)


def _matching(pattern: re.Pattern, value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise MalformedNotification(f"{what} {show(value)} is not valid")
    return value


def _digest(value: str, where: str) -> str:
    if not _DIGEST.fullmatch(value):
        raise MalformedNotification(f"{where} {show(value)} is not 'sha256:' + 64 lowercase hex")
    return value


def _tag(value: str, where: str) -> str:
    return _matching(_TAG, value, f"{where} (a tag: letters, digits, '_', '.', '-')")


def _name(domain: str, path: str, where: str) -> str:
    _matching(_DOMAIN, domain, f"{where} registry host")
    _matching(_PATH, path, f"{where} repository (lowercase path components)")
    name = f"{domain}/{path}"
    if len(name) > MAX_NAME_LENGTH:
        raise MalformedNotification(f"{where} name is longer than {MAX_NAME_LENGTH} characters")
    return name


def _object(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise MalformedNotification(f"{where} must be an object")
    return data


def from_distribution(body: Any) -> Parsed:
    events = _field(body, "events", "notification")
    if not isinstance(events, list):
        raise MalformedNotification("notification.events must be a list")
    pushes, ignored = [], []
    for index, event in enumerate(events):
        where = f"events[{index}]"
        action = _text(event, "action", where)
        if action != "push":
            ignored.append(f"{where}: {show(action)} event")
            continue
        target = _object(_field(event, "target", where), f"{where}.target")
        media_type = _optional_text(target, "mediaType", f"{where}.target")
        if media_type not in MANIFEST_MEDIA_TYPES:
            ignored.append(f"{where}: not a manifest ({show(media_type)})")
            continue
        tag = _optional_text(target, "tag", f"{where}.target")
        if tag is None:
            ignored.append(f"{where}: manifest pushed without a tag")
            continue
        host = _text(_field(event, "request", where), "host", f"{where}.request")
        repository = _text(target, "repository", f"{where}.target")
        digest = _text(target, "digest", f"{where}.target")
        pushes.append(
            Push(
                "registry",
                _name(host, repository, where),
                _tag(tag, f"{where}.target.tag"),
                _digest(digest, f"{where}.target.digest"),
            )
        )
    return pushes, ignored


def from_artifact_registry(body: Any) -> Parsed:
    message = _field(body, "message", "Pub/Sub push")
    data = _text(message, "data", "message")
    try:
        event = json.loads(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise MalformedNotification("message.data is not base64-encoded JSON") from None
    event = _object(event, "message.data")
    action = _text(event, "action", "message.data")
    if action != "INSERT":
        return [], [f"{show(action)} event"]
    tagged = _optional_text(event, "tag", "message.data")
    if tagged is None:
        return [], ["image pushed without a tag"]
    name, at, digest = _text(event, "digest", "message.data").partition("@")
    tagged_name, colon, tag = tagged.rpartition(":")
    domain, _, path = name.partition("/")
    if not at or not colon or tagged_name != name:
        raise MalformedNotification(
            "message.data digest and tag must be HOST/PROJECT/REPO/IMAGE@sha256:... and "
            "HOST/PROJECT/REPO/IMAGE:TAG of the same image"
        )
    return [
        Push(
            "artifact-registry",
            _name(domain, path, "message.data"),
            _tag(tag, "message.data.tag"),
            _digest(digest, "message.data.digest"),
        )
    ], []


def from_ecr(body: Any) -> Parsed:
    source = _text(body, "source", "event")
    kind = _text(body, "detail-type", "event")
    if (source, kind) != ("aws.ecr", "ECR Image Action"):
        return [], [f"{show(source)} {show(kind)} event"]
    detail = _object(_field(body, "detail", "event"), "event.detail")
    action = _text(detail, "action-type", "event.detail")
    result = _text(detail, "result", "event.detail")
    if (action, result) != ("PUSH", "SUCCESS"):
        return [], [f"{show(action)} {show(result)} image action"]
    tag = _optional_text(detail, "image-tag", "event.detail")
    if tag is None:
        return [], ["image pushed without a tag"]
    account = _matching(_ACCOUNT, _text(body, "account", "event"), "event.account")
    region = _matching(_REGION, _text(body, "region", "event"), "event.region")
    repository = _text(detail, "repository-name", "event.detail")
    digest = _text(detail, "image-digest", "event.detail")
    return [
        Push(
            "ecr",
            _name(f"{account}.dkr.ecr.{region}.amazonaws.com", repository, "event.detail"),
            _tag(tag, "event.detail.image-tag"),
            _digest(digest, "event.detail.image-digest"),
        )
    ], []


PARSERS = {
    "/registry": from_distribution,
    "/artifact-registry": from_artifact_registry,
    "/ecr": from_ecr,
}


def parse(path: str, body: bytes) -> Parsed:
    """The pushes in a notification `body` that arrived on `path` (one of PARSERS)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise MalformedNotification("the body is JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedNotification(f"the body is not JSON ({exc})") from None
    return PARSERS[path](data)
