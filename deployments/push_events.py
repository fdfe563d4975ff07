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

Each parser returns the pushes and, for everything else, why it was ignored; a body that
is not of its shape raises `MalformedNotification`.
"""

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
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

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


Parsed = tuple[list[Push], list[str]]


def _field(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise MalformedNotification(f"{where} has no {key!r}")
    return data[key]


def _text(data: Any, key: str, where: str) -> str:
    value = _field(data, key, where)
    if not isinstance(value, str) or not value:
        raise MalformedNotification(f"{where}.{key} must be a non-empty string")
    return value


def _digest(value: str, where: str) -> str:
    if not _DIGEST.match(value):
        raise MalformedNotification(f"{where} {value!r} is not a sha256 digest")
    return value


def from_distribution(body: Any) -> Parsed:
    events = _field(body, "events", "notification")
    if not isinstance(events, list):
        raise MalformedNotification("notification.events must be a list")
    pushes, ignored = [], []
    for index, event in enumerate(events):
        where = f"events[{index}]"
        action = _text(event, "action", where)
        target = _field(event, "target", where)
        media_type = target.get("mediaType") if isinstance(target, dict) else None
        if action != "push":
            ignored.append(f"{where}: {action} event")
        elif media_type not in MANIFEST_MEDIA_TYPES:
            ignored.append(f"{where}: not a manifest ({media_type})")
        elif not target.get("tag"):
            ignored.append(f"{where}: manifest pushed without a tag")
        else:
            host = _text(_field(event, "request", where), "host", f"{where}.request")
            repository = _text(target, "repository", f"{where}.target")
            digest = _digest(_text(target, "digest", f"{where}.target"), f"{where}.target.digest")
            pushes.append(Push("registry", f"{host}/{repository}", target["tag"], digest))
    return pushes, ignored


def from_artifact_registry(body: Any) -> Parsed:
    message = _field(body, "message", "Pub/Sub push")
    data = _text(message, "data", "message")
    try:
        event = json.loads(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        raise MalformedNotification("message.data is not base64-encoded JSON") from None
    action = _text(event, "action", "message.data")
    if action != "INSERT":
        return [], [f"{action} event"]
    if not event.get("tag"):
        return [], ["image pushed without a tag"]
    name, at, digest = _text(event, "digest", "message.data").partition("@")
    tagged_name, colon, tag = _text(event, "tag", "message.data").rpartition(":")
    if not at or not colon or tagged_name != name or "/" in tag:
        raise MalformedNotification(
            "message.data digest and tag must be HOST/PROJECT/REPO/IMAGE@sha256:... and "
            "HOST/PROJECT/REPO/IMAGE:TAG of the same image"
        )
    return [Push("artifact-registry", name, tag, _digest(digest, "message.data.digest"))], []


def from_ecr(body: Any) -> Parsed:
    source = _text(body, "source", "event")
    kind = _text(body, "detail-type", "event")
    if (source, kind) != ("aws.ecr", "ECR Image Action"):
        return [], [f"{source} {kind} event"]
    detail = _field(body, "detail", "event")
    action = _text(detail, "action-type", "event.detail")
    result = _text(detail, "result", "event.detail")
    if (action, result) != ("PUSH", "SUCCESS"):
        return [], [f"{action} {result} image action"]
    if not detail.get("image-tag"):
        return [], ["image pushed without a tag"]
    registry = f"{_text(body, 'account', 'event')}.dkr.ecr.{_text(body, 'region', 'event')}"
    repository = f"{registry}.amazonaws.com/{_text(detail, 'repository-name', 'event.detail')}"
    digest = _digest(_text(detail, "image-digest", "event.detail"), "event.detail.image-digest")
    return [Push("ecr", repository, detail["image-tag"], digest)], []


PARSERS = {
    "/registry": from_distribution,
    "/artifact-registry": from_artifact_registry,
    "/ecr": from_ecr,
}
