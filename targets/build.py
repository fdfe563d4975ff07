"""Building the images of a release: a directory or a git URL + ref, built with BuildKit
(the docker CLI) into one image per distinct stage its roles need, labelled with version
and source revision. Prefect-free: progress goes to `log`, one line at a time.

Why the CLI: docker-py's `api.build` is the legacy builder, which cannot build BuildKit
syntax (`RUN --mount=type=cache`, `COPY --chmod`) or take build secrets; python-on-whales
needs the buildx plugin, which this machine's Docker CLI lacks. `docker buildx build` is
used where buildx exists, else a Docker CLI that still builds with BuildKit itself
(before 23.0, e.g. Debian's docker.io 20.10) with DOCKER_BUILDKIT=1.

Versions: a clean git checkout is its commit (`git-<12 hex>`); anything else is a digest
of the files the build context sends (`.dockerignore` honoured, `.git` never read).
"""

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import exclude_paths

from targets.docker_engine import TRANSIENT_MARKERS
from targets.errors import ConfigurationError, StepFailed, TransientError
from targets.images import parse_image_reference

Log = Callable[[str], None]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
BUILD_KEY_LABEL = "io.rhesis.release.build-key"
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*\S+(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    reference: str  # repository:tag
    version: str
    source_revision: str
    stage: str | None = None  # None: the Dockerfile's last stage


@dataclass(frozen=True)
class BuildPlan:
    """What to build: `stages` maps each role to its stage (None: the last one)."""

    context: Path
    dockerfile: Path  # inside the context
    repository: str
    version: str
    stages: dict[str, str | None]
    args: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # id -> value
    network: str = "host"
    engine: str | None = None  # DOCKER_HOST of the engine that builds (None: the local one)
    sources: str | None = None  # what the context holds (source_id); None: always build

    def build_key(self, stage: str | None) -> str | None:
        """Everything a stage's image is made of: sources, Dockerfile, stage, arguments and
        the secrets' ids. An image labelled with it need not be built again."""
        if self.sources is None:
            return None
        parts = [self.sources, str(self.dockerfile.relative_to(self.context)), stage or ""]
        parts += [f"{k}={v}" for k, v in sorted(self.args.items())] + sorted(self.secrets)
        return hashlib.sha256("\0".join([*parts, self.version]).encode()).hexdigest()

    def tags(self) -> dict[str | None, str]:
        """The image reference of each distinct stage (see `stage_tag`)."""
        repository, api = parse_image_reference(self.repository), self.stages.get("api")
        return {
            stage: str(repository.with_tag(stage_tag(self.version, stage, api)))
            for stage in dict.fromkeys(self.stages.values())
        }


def stage_tag(version: str, stage: str | None, api_stage: str | None) -> str:
    """The tag of a stage's image: the version for the API's stage, `<version>-<stage>`
    for any other (`-final` for the Dockerfile's last, unnamed stage)."""
    return version if stage == api_stage else f"{version}-{stage or 'final'}"


def checked_plan(plan: BuildPlan) -> BuildPlan:
    """The plan, or a clear error naming what to fix: the Dockerfile must be there and
    every stage named must be one of its stages."""
    if not plan.dockerfile.is_file():
        raise ConfigurationError(
            f"no Dockerfile at {plan.dockerfile.relative_to(plan.context)} in the build context "
            f"{plan.context}: fix the application spec's build.dockerfile (relative to "
            "build.context)"
        )
    declared = dockerfile_stages(plan.dockerfile)
    for role, stage in plan.stages.items():
        if stage is not None and stage not in declared:
            raise ConfigurationError(
                f"build stage {stage!r} (role {role}) is not in {plan.dockerfile.name}, whose "
                f"stages are {', '.join(declared) or 'unnamed'}: fix build.stages"
            )
    return plan


def dockerfile_stages(dockerfile: Path) -> list[str]:
    """The names of the Dockerfile's stages (`FROM image AS name`)."""
    matches = (_FROM.match(line) for line in dockerfile.read_text().splitlines())
    return [m.group(1) for m in matches if m and m.group(1)]


def build_images(plan: BuildPlan, log: Log) -> dict[str, BuiltImage]:
    """Build each distinct stage once; the image of every role."""
    revision = source_revision(plan.context)
    built = {
        stage: _build(plan, stage, reference, revision, log)
        for stage, reference in plan.tags().items()
    }
    return {role: built[stage] for role, stage in plan.stages.items()}


def _build(plan: BuildPlan, stage: str | None, reference: str, revision: str, log: Log):
    key = plan.build_key(stage)
    if key is None:
        return _buildkit(plan, stage, reference, revision, key, log)
    # Releases of one change to several environments at once build it once: the first
    # holds the key's lock and builds, the others wait and find its image.
    with _exclusive(key):
        if image_id := _built_before(plan, reference, key):
            log(f"{reference} is already built from these sources ({image_id[:19]}): not rebuilt")
            return BuiltImage(image_id, reference, plan.version, revision, stage)
        return _buildkit(plan, stage, reference, revision, key, log)


@contextmanager
def _exclusive(key: str) -> Iterator[None]:
    """Held by one process of this machine at a time, per build key."""
    path = Path(tempfile.gettempdir()) / f"rhesis-release-build-{key[:32]}.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _buildkit(
    plan: BuildPlan, stage: str | None, reference: str, revision: str, key: str | None, log: Log
) -> BuiltImage:
    labels = {
        "org.opencontainers.image.version": plan.version,
        "org.opencontainers.image.revision": revision,
        **({BUILD_KEY_LABEL: key} if key else {}),
    }
    args = {"APP_VERSION": plan.version, **plan.args}
    what = f"docker build of {reference}" + (f" (stage {stage})" if stage else "")
    log(f"building {reference} from {plan.context} (revision {revision})")
    with tempfile.TemporaryDirectory(prefix="release-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        argv = [*buildkit_cli(), "--progress=plain", "-f", str(plan.dockerfile), "-t", reference]
        argv += ["--iidfile", str(iidfile), "--network", plan.network]
        if stage:
            argv += ["--target", stage]
        for name, value in labels.items():
            argv += ["--label", f"{name}={value}"]
        for name, value in args.items():
            argv += ["--build-arg", f"{name}={value}"]
        for index, (secret_id, value) in enumerate(plan.secrets.items()):
            path = Path(scratch) / f"secret-{index}"
            path.touch(mode=0o600)
            path.write_text(value)
            argv += ["--secret", f"id={secret_id},src={path}"]
        _run(argv + [str(plan.context)], plan.engine, what, log)
        image_id = iidfile.read_text().strip()
    return BuiltImage(image_id, reference, plan.version, revision, stage)


def _built_before(plan: BuildPlan, reference: str, key: str) -> str | None:
    """The id of the engine's image `reference` if it carries `key`, else None."""
    argv = [buildkit_cli()[0], "image", "inspect", "--format", "{{json .}}", reference]
    proc = subprocess.run(argv, env=_cli_env(plan.engine), capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    image = json.loads(proc.stdout)
    labels = (image.get("Config") or {}).get("Labels") or {}
    return image["Id"] if labels.get(BUILD_KEY_LABEL) == key else None


def _cli_env(engine: str | None) -> dict[str, str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    if engine:
        env["DOCKER_HOST"] = engine
    return env


def _run(argv: list[str], engine: str | None, what: str, log: Log) -> None:
    env = _cli_env(engine)
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        for raw in proc.stdout:
            for line in log_lines(raw):
                log(line)
                tail.append(line)
    if proc.returncode != 0:
        errors = [line for line in tail if "error" in line.lower()] or list(tail)[-5:]
        detail = " | ".join(errors[-5:])
        if any(marker in detail.lower() for marker in TRANSIENT_MARKERS):
            raise TransientError(f"{what} failed (exit {proc.returncode}): {detail}")
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {detail}")


def log_lines(raw: str) -> list[str]:
    """What one chunk of build output says, as lines worth a log entry: colour codes
    stripped, carriage-return redraws (progress bars) split, blank lines dropped."""
    return [line.rstrip() for line in _ANSI.sub("", raw).split("\r") if line.strip()]


@functools.cache
def buildkit_cli() -> tuple[str, ...]:
    """The command that builds with BuildKit here: `docker buildx build --load`, or a Docker
    CLI from before 23.0 (`docker build` with DOCKER_BUILDKIT=1)."""
    candidates = dict.fromkeys(filter(None, (shutil.which("docker"), "/usr/bin/docker")))
    for cli in candidates:
        if not os.access(cli, os.X_OK):
            continue
        if _succeeds([cli, "buildx", "version"]):
            return (cli, "buildx", "build", "--load")
        version = _output([cli, "version", "--format", "{{.Client.Version}}"])
        if version and version.split(".")[0].isdigit() and int(version.split(".")[0]) < 23:
            return (cli, "build")
    raise ConfigurationError(
        "no Docker CLI on this runner builds with BuildKit: install the buildx plugin, or "
        "Debian's docker.io (its CLI builds with DOCKER_BUILDKIT=1)"
    )


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


def source_id(context: Path, dockerfile: Path) -> str:
    """What the build context holds, as one id: `git-<commit>` of a clean checkout, else
    `src-<digest of the files it sends>`."""
    commit = clean_commit(context)
    return f"git-{commit}" if commit else "src-" + content_digest(context, dockerfile)


def content_version(sources: str) -> str:
    """The version derived from a source id: same code, same version."""
    return sources[:16]


def content_digest(context: Path, dockerfile: Path) -> str:
    """A digest of what the build context sends: `.dockerignore` (or the Dockerfile's own
    `<name>.dockerignore`) honoured, `.git` never read."""
    digest = hashlib.sha256()
    relative = dockerfile.relative_to(context).as_posix()
    for name in sorted(exclude_paths(str(context), _ignored(context, dockerfile), relative)):
        path = context / name
        if path.is_symlink():
            digest.update(name.encode() + b"\0->" + os.readlink(path).encode() + b"\0")
        elif path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _ignored(context: Path, dockerfile: Path) -> list[str]:
    own = dockerfile.with_name(dockerfile.name + ".dockerignore")
    ignore = own if own.is_file() else context / ".dockerignore"
    patterns = [".git"]
    if ignore.is_file():
        lines = (line.strip() for line in ignore.read_text().splitlines())
        patterns += [line for line in lines if line and not line.startswith("#")]
    return patterns


def clean_commit(path: Path) -> str | None:
    """The commit of the git checkout `path` is in, if nothing under `path` differs from it."""
    commit = _git_output(path, "rev-parse", "HEAD")
    if commit is None:
        return None
    changes = _git_output(path, "status", "--porcelain", "--untracked-files=all", "--", ".")
    return commit if changes == "" else None


def source_revision(path: Path) -> str:
    """The git commit `path` comes from ('+dirty' if it has local changes), or 'unknown'."""
    commit = _git_output(path, "rev-parse", "HEAD")
    if commit is None:
        return "unknown"
    return commit if clean_commit(path) else commit + "+dirty"


def _git_output(path: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, check=True
        )
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    return proc.stdout.strip()


def _is_git_url(source: str) -> bool:
    return "://" in source or source.startswith("git@") or source.endswith(".git")


@contextmanager
def checkout(source: str, ref: str | None, log: Log) -> Iterator[Path]:
    """The source as a local directory: the path itself, or a checkout of a git URL."""
    if _is_git_url(source):
        with tempfile.TemporaryDirectory(prefix="release-src-") as tmp:
            log(f"cloning {source} at {ref or 'default branch'}")
            _git(["clone", "--quiet", source, tmp])
            if ref:
                _git(["-C", tmp, "checkout", "--quiet", ref])
            yield Path(tmp)
        return
    if ref:
        raise ConfigurationError(
            f"git ref {ref!r} given with a local source {source!r}: pass a git URL as the "
            "source to build a ref, or drop the ref to build the directory as it is"
        )
    path = Path(source)
    if not path.is_dir():
        raise ConfigurationError(
            f"build context {source!r} does not exist: pass the directory (or git URL) that "
            "holds the backend's code as the source"
        )
    yield path.resolve()


def _git(args: list[str]) -> None:
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigurationError(
            f"git {' '.join(args[:2])} failed: {proc.stderr.strip()}; check the source URL and ref"
        )
