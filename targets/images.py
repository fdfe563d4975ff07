"""Image references (`registry/repository:tag@sha256:digest`): parsing and rendering.

Follows the grammar of distribution's reference package, so a reference that would be
refused by `docker push` is refused here first, with the reason.
"""

import re
from dataclasses import dataclass, replace

from targets.errors import ConfigurationError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")


@dataclass(frozen=True)
class ImageRef:
    registry: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Registry and repository, without tag or digest."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def with_tag(self, tag: str) -> "ImageRef":
        if not _TAG.match(tag):
            raise ConfigurationError(
                f"invalid image tag {tag!r}: use letters, digits, '_', '.', '-' "
                "(at most 128, not starting with '.' or '-')"
            )
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image_reference(text: str) -> ImageRef:
    """Parse an image reference; raise ConfigurationError saying what is wrong."""
    hint = "expected e.g. 'registry.example.com:5000/team/app:1.2' or 'team/app@sha256:<64 hex>'"
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise ConfigurationError(
            f"invalid image reference {text!r}: empty or contains spaces; {hint}"
        )
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise ConfigurationError(
                f"invalid image reference {text!r}: digest {digest!r} is not 'sha256:' + 64 "
                f"lowercase hex characters; {hint}"
            )
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ConfigurationError(f"invalid image reference {text!r}: bad tag {tag!r}; {hint}")
    registry, path = None, rest
    first, _, remainder = rest.partition("/")
    if remainder and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    ):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise ConfigurationError(
                f"invalid image reference {text!r}: bad registry host {registry!r}; {hint}"
            )
    if not _PATH.match(path):
        raise ConfigurationError(
            f"invalid image reference {text!r}: repository {path!r} must be lowercase "
            f"components separated by '/'; {hint}"
        )
    return ImageRef(registry=registry, repository=path, tag=tag, digest=digest)
