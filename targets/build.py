"""Building an image: a local directory or a git URL + ref becomes a labelled image whose
version, by default, is derived from its files. Prefect-free: progress goes to `log`."""

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

from targets.docker_engine import classify_engine_error
from targets.errors import ConfigurationError, ReleaseError, StepFailed
from targets.images import parse_image_reference

Log = Callable[[str], None]


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
